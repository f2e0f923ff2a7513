"""badit.data"""
