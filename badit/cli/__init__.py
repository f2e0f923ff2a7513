"""badit.cli"""
