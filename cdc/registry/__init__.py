"""MLflow at the edges: run tracking, the model registry (models by rate and objective), the pyfunc
model and its HTTP service, and model references (paths, shipped names, ``models:/``, ``best:``).
May import the codec core (models, zoo, coding) and the shared modules; never training or evaluation."""
