"""The generation server (FastAPI): `/v1` jobs and the Automatic1111-compatible `/sdapi/v1`."""
