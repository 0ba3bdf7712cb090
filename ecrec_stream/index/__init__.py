"""The live item index: FAISS vectors keyed by item id, the item store beside them, snapshots."""

from ecrec_stream.index.faiss_index import FaissItemIndex, SearchHit
from ecrec_stream.index.live import ApplyStats, LiveItemIndex
from ecrec_stream.index.store import ItemStore

__all__ = ["ApplyStats", "FaissItemIndex", "ItemStore", "LiveItemIndex", "SearchHit"]
