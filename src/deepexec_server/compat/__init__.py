"""Other services' APIs served by DeepExec, so that their existing clients work unchanged.

Each adapter translates shapes and units onto the same engine, jobs, tenants and limits as
``/v1``: every request it takes is an ordinary DeepExec job. It holds no behaviour of its own
that the engine should have.
"""
