"""badit.evaluation"""
