"""llmva_gebc.models"""
