"""llmva_gebc.data"""
