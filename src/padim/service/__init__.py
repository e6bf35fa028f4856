"""The inspection service (`pip install 'padim[serve]'`): FastAPI app, request parsing,
micro-batching, Prometheus metrics, example images, the web page (`web/`) and the server. Talks
to models only through `padim.deploy.scorers.Scorer`."""
