"""The pyfunc model file MLflow logs *as code* (no pickle): ``mlflow.pyfunc.log_model(python_model=
<this file>)`` stores this source, and loading runs it to get the model object. See cdc/registry/pyfunc.py."""

import mlflow

from cdc.registry.pyfunc import CDCPyfunc

mlflow.models.set_model(CDCPyfunc())
