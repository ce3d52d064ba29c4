"""DeepExec server: REST API, job engine, sandbox and model executors."""
