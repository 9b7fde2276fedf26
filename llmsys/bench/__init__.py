"""Benchmarks behind `llmsys bench ...`.

    llmsys bench serve --base-url http://127.0.0.1:8000 --num-prompts 200 --request-rate 8

`serve.py` is the load generator for any OpenAI-compatible server (the run and the command
line); `serve_prompts.py` makes its requests; `serve_metrics.py` turns the per-request
timings into the latency / throughput / goodput report (table, JSON, PNG).
"""
