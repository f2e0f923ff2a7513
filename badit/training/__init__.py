"""badit.training"""
