"""badit.adapter"""
