"""xformparser: layout-aware form parsing (entity labelling + key -> value linking).

    from xformparser import FormParser, XFormParserModel, load_documents
    model = XFormParserModel.from_pretrained("path/to/model_dir")   # or AutoModel.from_pretrained
    report = FormParser.from_pretrained("path/to/model_dir").evaluate(load_documents("funsd/testing_data"))
"""

from transformers import AutoConfig, AutoModel

from .configuration_xformparser import XFormParserConfig, soft_label_mix
from .evaluation import FormParser
from .formats import DataFormatError, Document, Entity, Word, load_documents
from .modeling_xformparser import XFormParserModel, XFormParserOutput

AutoConfig.register(XFormParserConfig.model_type, XFormParserConfig, exist_ok=True)
AutoModel.register(XFormParserConfig, XFormParserModel, exist_ok=True)

__all__ = [
    "DataFormatError", "Document", "Entity", "FormParser", "Word", "XFormParserConfig", "XFormParserModel",
    "XFormParserOutput", "load_documents", "soft_label_mix",
]
