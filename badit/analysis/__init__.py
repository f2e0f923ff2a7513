"""badit.analysis"""
