"""Retrieval-augmented generation: ingestion, chunking, search, answers, evaluation."""
