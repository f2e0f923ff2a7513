"""badit: BADIT (orthogonal basic-ability experts) as a PEFT method."""

__version__ = "0.1.0"
