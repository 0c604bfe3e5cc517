from . import errors
from . import _core
