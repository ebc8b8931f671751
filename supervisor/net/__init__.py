"""Container networking: pinned namespaces, CNI bridge networks, published
ports and the files that name things (pyroute2 and the reference CNI plugins)."""

from ._cni import CniError as CniError
from ._manager import Attachment as Attachment
from ._manager import Mode as Mode
from ._manager import NetworkManager as NetworkManager
from ._networks import DEFAULT_NETWORK as DEFAULT_NETWORK
from ._networks import Network as Network
from ._ports import PortMapping as PortMapping
from ._ports import parse_port as parse_port

__all__ = (
    "DEFAULT_NETWORK",
    "Attachment",
    "CniError",
    "Mode",
    "Network",
    "NetworkManager",
    "PortMapping",
    "parse_port",
)
