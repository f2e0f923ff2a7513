"""badit.regroup"""
