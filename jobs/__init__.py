"""`ray job submit` targets. Nothing imports this package."""
