"""llmva_gebc.eval"""
