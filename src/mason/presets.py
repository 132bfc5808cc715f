"""Safe presets for the libraries that models are saved with: ``numpy``, ``pandas``,
``sklearn``, ``torch``.

A preset is a ``Policy`` (combine them with ``|``, or pass several names to
``Policy.preset``) built from:

* exact names of classes and reconstructors whose construction runs no code chosen by the
  stream and touches no file, process or network;
* checked stand-ins (``mason._numpy_checks``, ``mason._torch_checks``) where a reconstructor
  is dangerous in general but needed for ordinary pickles;
* for pandas and scikit-learn, whose classes live in private modules that move between
  versions, a rule: a global ``pandas.<private path>.Name`` is admitted when ``Name`` is one
  of the preset's public names and the private path leads to exactly the object that the
  public name does (``pandas.core.frame.DataFrame`` is ``pandas.DataFrame``);
* for numpy, a check of every dtype that the stream builds, before the load runs
  (``mason._numpy_checks.check_dtypes``).

No preset uses a module wildcard: a wildcard over a library reaches functions that read
files (``pandas.read_pickle``), evaluate expressions (``pandas.eval``) or fetch data
(``sklearn.datasets``).  ``docs/models.md`` lists every entry and why it is safe.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

from . import _numpy_checks as npc
from . import _postload_checks as plc
from . import _torch_checks as tc
from .policy import SAFE_DATA_NAMES, Policy
from ._safe_constructors import SAFE_SUBSTITUTES

__all__ = ["preset_policy", "PRESETS", "PublicNameRule"]

PRESETS = ("numpy", "pandas", "sklearn", "torch")

# --- numpy ---------------------------------------------------------------------------------

# numpy's scalar types: classes whose call converts a number or a string, nothing more.
# Estimators keep them as parameters (dtype=np.float64).
_NUMPY_SCALAR_TYPES = (
    "bool", "bool_", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
    "uint64", "intc", "uintc", "intp", "uintp", "longlong", "ulonglong", "float16",
    "float32", "float64", "longdouble", "complex64", "complex128", "clongdouble",
    "datetime64", "timedelta64", "str_", "bytes_", "void", "object_", "generic",
    "number", "integer", "signedinteger", "unsignedinteger", "floating",
    "complexfloating", "inexact",
)


def _numpy_classes():
    import numpy
    return (numpy.ndarray, numpy.matrix)


_reconstruct = npc.bind_reconstruct(_numpy_classes)

NUMPY_SUBSTITUTES = {
    "numpy.dtype": npc.dtype,
    "numpy._core.multiarray._reconstruct": _reconstruct,
    "numpy.core.multiarray._reconstruct": _reconstruct,
    "numpy._core.numeric._frombuffer": npc.frombuffer,
    "numpy.core.numeric._frombuffer": npc.frombuffer,
    "numpy._core.multiarray.scalar": npc.scalar,
    "numpy.core.multiarray.scalar": npc.scalar,
}

NUMPY_NAMES = (
    "numpy.ndarray", "numpy.matrix",
    *(f"numpy.{name}" for name in _NUMPY_SCALAR_TYPES),
    # mason's own out-of-band array (mason.arrays): its rebuild checks what it is given
    "mason.arrays.rebuild_array", "mason._numpy_checks.rebuild_array",
    # random number generators, as estimators keep them (random_state=RandomState(0)): the
    # constructors look a generator class up by name in numpy's own table, and the
    # generators' __setstate__ checks the sizes of the state it is given
    "numpy.random._pickle.__randomstate_ctor", "numpy.random._pickle.__generator_ctor",
    "numpy.random._pickle.__bit_generator_ctor", "numpy.random.mtrand.RandomState",
    "numpy.random._generator.Generator", "numpy.random._mt19937.MT19937",
    "numpy.random._pcg64.PCG64", "numpy.random._pcg64.PCG64DXSM",
    "numpy.random._philox.Philox", "numpy.random._sfc64.SFC64",
    "numpy.random.bit_generator.SeedSequence",
    "numpy.random.bit_generator.__pyx_unpickle_SeedSequence",
)

# --- torch ---------------------------------------------------------------------------------

TORCH_SUBSTITUTES = {
    "torch._utils._rebuild_tensor_v2": tc.rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": tc.rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": tc.rebuild_parameter_with_state,
    "torch._tensor._rebuild_from_type_v2": tc.rebuild_from_type_v2,
    "torch.storage._load_from_bytes": tc.load_from_bytes,
    "torch._utils._rebuild_qtensor": tc.rebuild_qtensor,
    "torch._utils._rebuild_sparse_tensor": tc.rebuild_sparse_tensor,
    "torch.serialization._get_layout": tc.get_layout,
    **{f"torch.{name}": tc.StorageType(name, dtype)
       for name, dtype in tc.STORAGE_TYPES.items()},
}

TORCH_NAMES = (
    # dtypes, devices, layouts and sizes are values: calling a dtype or layout is an error,
    # torch.device parses a device string, torch.Size is a tuple
    *(f"torch.{name}" for name in (
        "float64", "float32", "float16", "bfloat16", "complex128", "complex64", "int64",
        "int32", "int16", "int8", "uint8", "uint16", "uint32", "uint64", "bool",
        "float8_e4m3fn", "float8_e5m2", "double", "float", "half", "long", "int", "short",
        "cfloat", "cdouble")),
    "torch.device", "torch.Size", "torch.strided", "torch.contiguous_format",
    "torch.channels_last", "torch.preserve_format",
    # layouts and quantization schemes are values too (sparse and quantized tensors)
    "torch.sparse_coo", "torch.sparse_csr", "torch.sparse_csc", "torch.sparse_bsr",
    "torch.sparse_bsc", "torch.per_tensor_affine", "torch.per_channel_affine",
    "torch.per_channel_affine_float_qparams",
    # mason's own out-of-band tensors (mason.arrays): the rebuilds check what they are given
    "mason.arrays.rebuild_tensor", "mason.arrays.rebuild_tensor_view",
    "mason.arrays.rebuild_storage", "mason._torch_checks.rebuild_storage",
)

# --- pandas --------------------------------------------------------------------------------

# Public names of pandas classes and values that DataFrames, Series and indexes pickle
# with; the rule below admits them under whatever private module pandas pickled them.
PANDAS_PUBLIC = {
    "pandas": (
        "DataFrame", "Series", "Index", "RangeIndex", "MultiIndex", "CategoricalIndex",
        "DatetimeIndex", "TimedeltaIndex", "PeriodIndex", "IntervalIndex", "Categorical",
        "CategoricalDtype", "DatetimeTZDtype", "PeriodDtype", "IntervalDtype", "SparseDtype",
        "StringDtype", "BooleanDtype", "Int8Dtype", "Int16Dtype", "Int32Dtype", "Int64Dtype",
        "UInt8Dtype", "UInt16Dtype", "UInt32Dtype", "UInt64Dtype", "Float32Dtype",
        "Float64Dtype", "Timestamp", "Timedelta", "Period", "Interval", "NA", "NaT",
        "Flags",
    ),
    "pandas.arrays": (
        "DatetimeArray", "TimedeltaArray", "PeriodArray", "IntervalArray", "IntegerArray",
        "FloatingArray", "BooleanArray", "StringArray", "SparseArray", "NumpyExtensionArray",
    ),
    # frequencies of date ranges (DateOffset subclasses): values
    "pandas.tseries.offsets": (
        "Day", "Hour", "Minute", "Second", "Milli", "Micro", "Nano", "BusinessDay",
        "BusinessHour", "Week", "WeekOfMonth", "LastWeekOfMonth", "MonthEnd", "MonthBegin",
        "BusinessMonthEnd", "BusinessMonthBegin", "SemiMonthEnd", "SemiMonthBegin",
        "QuarterEnd", "QuarterBegin", "BQuarterEnd", "BQuarterBegin", "YearEnd",
        "YearBegin", "BYearEnd", "BYearBegin", "DateOffset", "Easter", "FY5253",
        "FY5253Quarter",
    ),
}

# pandas' reconstructors, by their private names (they have no public ones).  Each makes
# one pandas object from arrays and plain values; none calls anything it is given except
# an allowed class's constructor.
PANDAS_NAMES = (
    "pandas.core.indexes.base._new_Index",
    "pandas.core.indexes.period._new_PeriodIndex",
    "pandas.core.indexes.datetimes._new_DatetimeIndex",
    "pandas.core.indexes.timedeltas._new_TimedeltaIndex",
    "pandas.core.internals.managers.BlockManager",
    "pandas.core.internals.managers.SingleBlockManager",
    "pandas._libs.internals._unpickle_block",
    "pandas.core.internals.blocks.new_block",
    "pandas._libs.arrays.__pyx_unpickle_NDArrayBacked",
    "pandas._libs.interval.__pyx_unpickle_IntervalMixin",
    "pandas._libs.tslibs.timestamps._unpickle_timestamp",
    "pandas._libs.tslibs.timedeltas._timedelta_unpickle",
    "pandas._libs.tslibs.nattype._nat_unpickle",
    "pandas._libs.tslibs.nattype.__nat_unpickle",
    "pandas._libs.sparse.IntIndex", "pandas._libs.sparse.BlockIndex",
    "pandas._libs.missing.NA",
    "pandas.core.arrays.string_.StringArray",
    "pandas.core.arrays.numpy_.NumpyExtensionArray",
)

# --- scikit-learn --------------------------------------------------------------------------

# Public names of scikit-learn estimators (sklearn.utils.discovery.all_estimators() of
# scikit-learn 1.9, by public module).  Estimators only store their parameters in
# __init__ (scikit-learn's own rule, checked by its test suite) and restore their fitted
# attributes as a plain __dict__ update in __setstate__.
SKLEARN_PUBLIC = {
    "sklearn.calibration": ("CalibratedClassifierCV",),
    "sklearn.cluster": (
        "AffinityPropagation", "AgglomerativeClustering", "Birch", "BisectingKMeans",
        "DBSCAN", "FeatureAgglomeration", "HDBSCAN", "KMeans", "MeanShift",
        "MiniBatchKMeans", "OPTICS", "SpectralBiclustering", "SpectralClustering",
        "SpectralCoclustering"),
    "sklearn.compose": ("ColumnTransformer", "TransformedTargetRegressor"),
    "sklearn.covariance": (
        "EllipticEnvelope", "EmpiricalCovariance", "GraphicalLasso", "GraphicalLassoCV",
        "LedoitWolf", "MinCovDet", "OAS", "ShrunkCovariance"),
    "sklearn.cross_decomposition": ("CCA", "PLSCanonical", "PLSRegression", "PLSSVD"),
    "sklearn.decomposition": (
        "DictionaryLearning", "FactorAnalysis", "FastICA", "IncrementalPCA", "KernelPCA",
        "LatentDirichletAllocation", "MiniBatchDictionaryLearning", "MiniBatchNMF",
        "MiniBatchSparsePCA", "NMF", "PCA", "SparseCoder", "SparsePCA", "TruncatedSVD"),
    "sklearn.discriminant_analysis": (
        "LinearDiscriminantAnalysis", "QuadraticDiscriminantAnalysis"),
    "sklearn.dummy": ("DummyClassifier", "DummyRegressor"),
    "sklearn.ensemble": (
        "AdaBoostClassifier", "AdaBoostRegressor", "BaggingClassifier", "BaggingRegressor",
        "ExtraTreesClassifier", "ExtraTreesRegressor", "GradientBoostingClassifier",
        "GradientBoostingRegressor", "HistGradientBoostingClassifier",
        "HistGradientBoostingRegressor", "IsolationForest", "RandomForestClassifier",
        "RandomForestRegressor", "RandomTreesEmbedding", "StackingClassifier",
        "StackingRegressor", "VotingClassifier", "VotingRegressor"),
    "sklearn.feature_extraction": ("DictVectorizer", "FeatureHasher"),
    "sklearn.feature_extraction.text": (
        "CountVectorizer", "HashingVectorizer", "TfidfTransformer", "TfidfVectorizer"),
    "sklearn.feature_selection": (
        "GenericUnivariateSelect", "RFE", "RFECV", "SelectFdr", "SelectFpr",
        "SelectFromModel", "SelectFwe", "SelectKBest", "SelectPercentile",
        "SequentialFeatureSelector", "VarianceThreshold",
        # default score functions of the selectors: pure computations on arrays
        "chi2", "f_classif", "f_regression", "r_regression", "mutual_info_classif",
        "mutual_info_regression"),
    "sklearn.gaussian_process": ("GaussianProcessClassifier", "GaussianProcessRegressor"),
    "sklearn.gaussian_process.kernels": (
        "RBF", "Matern", "RationalQuadratic", "ExpSineSquared", "DotProduct",
        "WhiteKernel", "ConstantKernel", "Sum", "Product", "Exponentiation",
        "PairwiseKernel", "Hyperparameter"),
    "sklearn.impute": ("IterativeImputer", "KNNImputer", "MissingIndicator",
                       "SimpleImputer"),
    "sklearn.isotonic": ("IsotonicRegression",),
    "sklearn.kernel_approximation": (
        "AdditiveChi2Sampler", "Nystroem", "PolynomialCountSketch", "RBFSampler",
        "SkewedChi2Sampler"),
    "sklearn.kernel_ridge": ("KernelRidge",),
    "sklearn.linear_model": (
        "ARDRegression", "BayesianRidge", "ElasticNet", "ElasticNetCV", "GammaRegressor",
        "HuberRegressor", "Lars", "LarsCV", "Lasso", "LassoCV", "LassoLars", "LassoLarsCV",
        "LassoLarsIC", "LinearRegression", "LogisticRegression", "LogisticRegressionCV",
        "MultiTaskElasticNet", "MultiTaskElasticNetCV", "MultiTaskLasso",
        "MultiTaskLassoCV", "OrthogonalMatchingPursuit", "OrthogonalMatchingPursuitCV",
        "PassiveAggressiveClassifier", "PassiveAggressiveRegressor", "Perceptron",
        "PoissonRegressor", "QuantileRegressor", "RANSACRegressor", "Ridge", "RidgeCV",
        "RidgeClassifier", "RidgeClassifierCV", "SGDClassifier", "SGDOneClassSVM",
        "SGDRegressor", "TheilSenRegressor", "TweedieRegressor"),
    "sklearn.manifold": ("Isomap", "LocallyLinearEmbedding", "MDS", "SpectralEmbedding",
                         "TSNE"),
    "sklearn.mixture": ("BayesianGaussianMixture", "GaussianMixture"),
    "sklearn.model_selection": ("FixedThresholdClassifier", "GridSearchCV",
                                "HalvingGridSearchCV", "HalvingRandomSearchCV",
                                "RandomizedSearchCV", "TunedThresholdClassifierCV",
                                "KFold", "StratifiedKFold"),
    "sklearn.multiclass": ("OneVsOneClassifier", "OneVsRestClassifier",
                           "OutputCodeClassifier"),
    "sklearn.multioutput": ("ClassifierChain", "MultiOutputClassifier",
                            "MultiOutputRegressor", "RegressorChain"),
    "sklearn.naive_bayes": ("BernoulliNB", "CategoricalNB", "ComplementNB", "GaussianNB",
                            "MultinomialNB"),
    "sklearn.neighbors": (
        "BallTree", "KDTree", "KNeighborsClassifier", "KNeighborsRegressor",
        "KNeighborsTransformer", "KernelDensity", "LocalOutlierFactor", "NearestCentroid",
        "NearestNeighbors", "NeighborhoodComponentsAnalysis", "RadiusNeighborsClassifier",
        "RadiusNeighborsRegressor", "RadiusNeighborsTransformer"),
    "sklearn.neural_network": ("BernoulliRBM", "MLPClassifier", "MLPRegressor"),
    "sklearn.pipeline": ("FeatureUnion", "Pipeline"),
    "sklearn.preprocessing": (
        "Binarizer", "FunctionTransformer", "KBinsDiscretizer", "KernelCenterer",
        "LabelBinarizer", "LabelEncoder", "MaxAbsScaler", "MinMaxScaler",
        "MultiLabelBinarizer", "Normalizer", "OneHotEncoder", "OrdinalEncoder",
        "PolynomialFeatures", "PowerTransformer", "QuantileTransformer", "RobustScaler",
        "SplineTransformer", "StandardScaler", "TargetEncoder"),
    "sklearn.random_projection": ("GaussianRandomProjection", "SparseRandomProjection"),
    "sklearn.semi_supervised": ("LabelPropagation", "LabelSpreading", "SelfTrainingClassifier"),
    "sklearn.svm": ("LinearSVC", "LinearSVR", "NuSVC", "NuSVR", "OneClassSVM", "SVC", "SVR"),
    "sklearn.tree": ("DecisionTreeClassifier", "DecisionTreeRegressor",
                     "ExtraTreeClassifier", "ExtraTreeRegressor"),
    "sklearn.utils": ("Bunch",),
}

# The fitted internals that estimators carry, by their private names: Cython classes whose
# __setstate__ / __reduce__ take arrays and check their dtype and shape, loss and link
# objects (values), the binned predictors of histogram gradient boosting, and the
# ``newObj(cls) = cls.__new__(cls)`` helpers of the neighbors trees (as copyreg.__newobj__).
SKLEARN_NAMES = (
    "sklearn.tree._tree.Tree",
    "sklearn.neighbors._kd_tree.KDTree", "sklearn.neighbors._kd_tree.newObj",
    "sklearn.neighbors._ball_tree.BallTree", "sklearn.neighbors._ball_tree.newObj",
    "sklearn.metrics._dist_metrics.newObj",
    *(f"sklearn.metrics._dist_metrics.{name}{bits}" for bits in ("", "32", "64")
      for name in ("EuclideanDistance", "SEuclideanDistance", "ManhattanDistance",
                   "ChebyshevDistance", "MinkowskiDistance", "MahalanobisDistance",
                   "HammingDistance", "CanberraDistance", "BrayCurtisDistance",
                   "JaccardDistance", "MatchingDistance", "DiceDistance",
                   "KulsinskiDistance", "RogersTanimotoDistance", "RussellRaoDistance",
                   "SokalMichenerDistance", "SokalSneathDistance", "HaversineDistance")),
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.ensemble._gb.VerboseReporter",
    "sklearn._loss.link.Interval", "sklearn._loss.link.IdentityLink",
    "sklearn._loss.link.LogLink", "sklearn._loss.link.LogitLink",
    "sklearn._loss.link.HalfLogitLink", "sklearn._loss.link.MultinomialLogit",
    *(f"sklearn._loss.loss.{name}" for name in (
        "HalfSquaredError", "AbsoluteError", "PinballLoss", "HuberLoss",
        "HalfPoissonLoss", "HalfGammaLoss", "HalfTweedieLoss", "HalfTweedieLossIdentity",
        "HalfBinomialLoss", "ExponentialLoss", "HalfMultinomialLoss")),
    *(f"sklearn._loss._loss.Cy{name}" for name in (
        "HalfSquaredError", "AbsoluteError", "PinballLoss", "HuberLoss",
        "HalfPoissonLoss", "HalfGammaLoss", "HalfTweedieLoss", "HalfTweedieLossIdentity",
        "HalfBinomialLoss", "ExponentialLoss", "HalfMultinomialLoss")),
    *(f"sklearn.linear_model._sgd_fast.{name}" for name in (
        "Hinge", "ModifiedHuber", "SquaredHinge", "Log", "SquaredLoss", "Huber",
        "EpsilonInsensitive", "SquaredEpsilonInsensitive")),
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
    "sklearn.preprocessing._data._handle_zeros_in_scale",
)


# --- the rule for private paths ------------------------------------------------------------

class PublicNameRule:
    """Admit ``<package>.<private module>.Name`` when ``Name`` is one of ``public`` and the
    private path leads to the very object that the public name does.

    Only the module the stream names and the public module are imported; the walk to the
    object refuses dunder attributes, as the policy's own does."""

    __slots__ = ("package", "public", "_cache")

    def __init__(self, package: str, public: dict[str, tuple[str, ...]]):
        self.package = package
        self.public = {name: module for module, names in public.items() for name in names}
        self._cache: dict[tuple[str, str], Any] = {}

    def __call__(self, module: str, qualname: str):
        if module != self.package and not module.startswith(self.package + "."):
            return None
        public_module = self.public.get(qualname)
        if public_module is None:
            return None
        key = (module, qualname)
        if key in self._cache:
            return self._cache[key]
        found = None
        try:
            expected = getattr(_import(public_module), qualname)
            named = getattr(_import(module), qualname)
            if named is expected and not isinstance(named, types.ModuleType):
                found = named
        except Exception:
            found = None
        self._cache[key] = found
        return found

    def names(self) -> list[str]:
        return [f"{module}.{name}" for name, module in self.public.items()]


def _import(module: str):
    found = sys.modules.get(module)
    return found if found is not None else importlib.import_module(module)


# --- building the policies -----------------------------------------------------------------

def _numpy() -> Policy:
    return Policy(NUMPY_NAMES, substitutes=NUMPY_SUBSTITUTES,
                  prechecks=(npc.check_dtypes,))


def _torch() -> Policy:
    return Policy(TORCH_NAMES, substitutes=TORCH_SUBSTITUTES)


def _pandas() -> Policy:
    rule = PublicNameRule("pandas", PANDAS_PUBLIC)
    return _numpy() | Policy(PANDAS_NAMES + tuple(rule.names()), rules=(rule,),
                             prechecks=(plc.pandas_precheck,))


def _sklearn() -> Policy:
    rule = PublicNameRule("sklearn", SKLEARN_PUBLIC)
    return _numpy() | Policy(SKLEARN_NAMES + tuple(rule.names()), rules=(rule,),
                             prechecks=(plc.sklearn_precheck,))


_BUILDERS = {"numpy": _numpy, "pandas": _pandas, "sklearn": _sklearn, "torch": _torch}
_MADE: dict[tuple[str, ...], Policy] = {}


def preset_policy(*names) -> Policy:
    """The default policy plus the named presets (names, or "numpy+pandas" strings, or
    Policy objects, which are combined as they are)."""
    wanted: list[str] = []
    extra: list[Policy] = []
    for name in names:
        if isinstance(name, Policy):
            extra.append(name)
            continue
        if not isinstance(name, str):
            raise TypeError(f"a preset is a name or a Policy, not {type(name).__name__}")
        for part in name.replace("+", ",").split(","):
            part = part.strip().lower()
            if part == "scikit-learn":
                part = "sklearn"
            if part not in _BUILDERS:
                raise ValueError(f"unknown preset {part!r}: choose from {', '.join(PRESETS)}")
            if part not in wanted:
                wanted.append(part)
    key = tuple(sorted(wanted))
    policy = _MADE.get(key)
    if policy is None:
        policy = Policy(SAFE_DATA_NAMES, substitutes=SAFE_SUBSTITUTES)
        for part in key:
            policy = policy | _BUILDERS[part]()
        _MADE[key] = policy
    for other in extra:
        policy = policy | other
    return policy
