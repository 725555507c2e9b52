"""The model zoo. Every model module is imported here, in one visible list."""
import warnings

# timm 1.0.22 (the newest that dynamic-network-architectures 0.4.4 allows) calls torch.jit.interface at
# import, which torch >= 2.10 reports as deprecated on stderr of every command; nothing here uses it.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.interface` is deprecated", category=FutureWarning)

# importing a model module registers its models
from models import monai_nets, nnunet, r50unet, smp, swinunet, transunet, unet, unet_plain  # noqa: E402,F401
from models.registry import (  # noqa: E402
    at_input_size,
    check_input_size,
    check_model_args,
    create_model,
    is_model,
    list_models,
    register_model,
    require_models,
)

__all__ = ["at_input_size", "check_input_size", "check_model_args", "create_model", "is_model", "list_models",
           "register_model", "require_models"]
