"""Looking inside models: per-layer summaries and the zoo table, the input-size check, BatchNorm
folding and the weight-sharing matrix of a convolution; and looking inside trained ones: filters
and their Gabor fits, feature maps, saliency maps and their sanity check, class models,
adversarial examples, the loss landscape, shift equivariance and the top losses.

    >>> from cnnlab import inspect, models
    >>> print(inspect.summary(models.create("lenet5"), "1x28x28"))  # doctest: +SKIP
"""
from cnnlab.inspect.check import check_input_size, parse_input_size
from cnnlab.inspect.class_model import class_model
from cnnlab.inspect.conv_matrix import conv_bias_vector, conv_matrix
from cnnlab.inspect.adversarial import RobustPoint, fgsm, pgd, robustness_curve
from cnnlab.inspect.equivariance import Equivariance, EquivarianceRow, shift_equivariance
from cnnlab.inspect.filters import activations, conv_layer_names, conv_layers, filters, find_conv
from cnnlab.inspect.fold import fold_bn
from cnnlab.inspect.gabor import GaborFit, gabor_fit
from cnnlab.inspect.landscape import Landscape, Line, filter_normalized_direction, landscape_1d, landscape_2d
from cnnlab.inspect.saliency import SanityRow, saliency, saliency_sanity, spearman
from cnnlab.inspect.top_losses import TopLoss, top_losses, top_losses_from_proba
from cnnlab.inspect.summary import (
    LayerRow, Summary, ZooRow, count_macs, format_table, format_zoo, params_by_type, summary, zoo_table,
)

__all__ = [
    "class_model", "TopLoss", "top_losses", "top_losses_from_proba", "Equivariance", "EquivarianceRow", "shift_equivariance", "GaborFit", "Landscape", "Line", "filter_normalized_direction", "landscape_1d", "landscape_2d", "RobustPoint", "SanityRow", "fgsm", "pgd", "robustness_curve", "activations", "saliency", "saliency_sanity", "spearman", "conv_layer_names", "conv_layers", "filters", "find_conv", "gabor_fit",
    "LayerRow", "Summary", "ZooRow", "check_input_size", "conv_bias_vector", "conv_matrix", "count_macs",
    "fold_bn",
    "format_table", "format_zoo", "params_by_type", "parse_input_size", "summary", "zoo_table",
]
