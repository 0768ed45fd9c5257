"""The served model as MLflow "models from code": MLflow runs this file to build the model instead of
unpickling a Python object (``log_and_register`` passes its path)."""
from mlflow.models import set_model

from florence2.pyfunc import Florence2PyFunc

set_model(Florence2PyFunc())
