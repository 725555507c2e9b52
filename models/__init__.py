"""The model zoo. Every model module is imported here, in one visible list."""
from models import smp, swinunet, transunet, unet  # noqa: F401,E402  (registers the models)
from models.registry import check_model_args, create_model, is_model, list_models, register_model

__all__ = ["check_model_args", "create_model", "is_model", "list_models", "register_model"]
