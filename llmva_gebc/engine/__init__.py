"""llmva_gebc.engine"""
