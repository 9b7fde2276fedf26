"""Where to put `RAG(min_similarity=...)` for MiniLM: the best cosine between a question and
the Cranfield abstracts, for Cranfield's own 225 queries and for off-topic questions.

    HF_HUB_OFFLINE=1 python benchmarks/rag_relevance_gate.py --cranfield DIR

Prints the minimum, 5th percentile and median of the on-topic best cosines and each
off-topic question's best cosine; a gate between the two groups refuses the off-topic
questions and answers the others. Embeddings are cached in build/rag-bench/.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

OFF_TOPIC = [
    "who won the football match yesterday?", "what is a good recipe for banana bread?",
    "how do I reset my iphone password?", "what is the capital of australia?",
    "recommend a good movie for tonight", "how tall is mount everest?",
    "what time does the pharmacy open?", "who wrote pride and prejudice?",
    "best way to learn guitar", "what is the price of bitcoin today?",
    "how many calories in an apple?", "tell me a joke about cats",
]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cranfield", required=True)
    args = p.parse_args()
    from llmsys.agent.memory import MiniLMEmbedder
    from llmsys.rag.datasets import load_cranfield
    from llmsys.rag.embeddings import CachedEmbedder

    collection = load_cranfield(args.cranfield)
    Path("build/rag-bench").mkdir(parents=True, exist_ok=True)
    embedder = CachedEmbedder(MiniLMEmbedder(), "build/rag-bench/gate.embeddings")
    docs = embedder.embed([f"{d.title}\n\n{d.text}" if d.title else d.text
                           for d in collection.documents])
    on = (embedder.embed([q.text for q in collection.queries]) @ docs.T).max(axis=1)
    off = (embedder.embed(OFF_TOPIC) @ docs.T).max(axis=1)
    print(f"Cranfield queries ({len(on)}): best cosine min {on.min():.3f}, "
          f"5th percentile {np.percentile(on, 5):.3f}, median {np.median(on):.3f}")
    for question, cosine in sorted(zip(OFF_TOPIC, off, strict=True), key=lambda x: -x[1]):
        print(f"off-topic {cosine:.3f}  {question}")


if __name__ == "__main__":
    main()
