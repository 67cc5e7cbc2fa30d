"""`qrun serve`: an OpenAI-compatible HTTP server over one loaded model.

- `command.py`: the `qrun serve` command (flags, loading, binding, uvicorn);
- `app.py`: the FastAPI routes, prompts built as qrun builds them, OpenAI's JSON answers and errors;
- `schemas.py`: the request bodies (pydantic, OpenAI's field names);
- `scheduler.py`: the thread that owns the model and batches all streams' decode steps into one forward call;
- `metrics.py`: counters and gauges in Prometheus' text format.

    from qconv.runtime.server.app import create_app
    app = create_app(Model("model.gguf", n_seq=4), "model.gguf")   # an ASGI app: uvicorn.run(app)
"""
