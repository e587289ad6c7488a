"""The fleet on Ray Serve (`fleet serve --ray`, needs `pip install 'fleetlm[ray]'`): one engine
deployment per local base model and the gateway, the same FastAPI app as a Serve ingress,
whose base models are `RayTarget`s (data through deployment handles). Placement, replica
health and autoscaling are Ray's. Every module here imports `ray`; nothing else in fleetlm
imports this package but the command line, lazily."""
