"""Training: the run spec, the loop (``Trainer``), its phases, losses, EMA, distributed set-up and the
training state; the command line is ``cdc/train.py``. May import the codec core (models, zoo, coding)
and ``cdc.registry`` (MLflow tracking, model references); never evaluation."""
