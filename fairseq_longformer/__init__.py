"""fairseq plugin: ``fairseq-train --user-dir fairseq_longformer``.

Importing it (which ``--user-dir`` does) registers the plugin's models, tasks and criterions and makes
fairseq checkpoints loadable under torch's safe ``weights_only`` unpickler.
"""

from .safe_load import allow_fairseq_checkpoints

allow_fairseq_checkpoints()

# fairseq only imports the top package of a --user-dir; registration happens on import, so every
# module of these sub-packages is imported here (criterions are not auto-imported otherwise).
from . import criterions, models, tasks  # noqa: E402,F401
from .models.longformer_roberta import LongformerRobertaModel  # noqa: E402,F401  hub: .from_pretrained(DIR)
from .models.longformer_bart import LongformerBartModel  # noqa: E402,F401  hub: .from_pretrained(DIR)
