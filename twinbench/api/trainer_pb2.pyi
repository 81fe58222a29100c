from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    QUEUED: _ClassVar[JobState]
    RUNNING: _ClassVar[JobState]
    SUCCEEDED: _ClassVar[JobState]
    FAILED: _ClassVar[JobState]
    CANCELLED: _ClassVar[JobState]
JOB_STATE_UNSPECIFIED: JobState
QUEUED: JobState
RUNNING: JobState
SUCCEEDED: JobState
FAILED: JobState
CANCELLED: JobState

class JobSpec(_message.Message):
    __slots__ = ("framework", "model", "dataset", "epochs", "batch_size", "optimizer", "seed", "device", "export_formats", "train_samples", "init", "target_accuracy", "resume", "warmup_steps", "skip_export", "width", "image_size", "compiled", "channels_last", "hidden_units", "precision", "workers", "devices_per_worker", "env_steps", "pretrained_weights")
    FRAMEWORK_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    EXPORT_FORMATS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    INIT_FIELD_NUMBER: _ClassVar[int]
    TARGET_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    WARMUP_STEPS_FIELD_NUMBER: _ClassVar[int]
    SKIP_EXPORT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    COMPILED_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_LAST_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_UNITS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_PER_WORKER_FIELD_NUMBER: _ClassVar[int]
    ENV_STEPS_FIELD_NUMBER: _ClassVar[int]
    PRETRAINED_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    framework: str
    model: str
    dataset: str
    epochs: int
    batch_size: int
    optimizer: Optimizer
    seed: int
    device: str
    export_formats: _containers.RepeatedScalarFieldContainer[str]
    train_samples: int
    init: str
    target_accuracy: float
    resume: bool
    warmup_steps: int
    skip_export: bool
    width: float
    image_size: int
    compiled: bool
    channels_last: bool
    hidden_units: _containers.RepeatedScalarFieldContainer[int]
    precision: str
    workers: int
    devices_per_worker: int
    env_steps: int
    pretrained_weights: str
    def __init__(self, framework: _Optional[str] = ..., model: _Optional[str] = ..., dataset: _Optional[str] = ..., epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., optimizer: _Optional[_Union[Optimizer, _Mapping]] = ..., seed: _Optional[int] = ..., device: _Optional[str] = ..., export_formats: _Optional[_Iterable[str]] = ..., train_samples: _Optional[int] = ..., init: _Optional[str] = ..., target_accuracy: _Optional[float] = ..., resume: _Optional[bool] = ..., warmup_steps: _Optional[int] = ..., skip_export: _Optional[bool] = ..., width: _Optional[float] = ..., image_size: _Optional[int] = ..., compiled: _Optional[bool] = ..., channels_last: _Optional[bool] = ..., hidden_units: _Optional[_Iterable[int]] = ..., precision: _Optional[str] = ..., workers: _Optional[int] = ..., devices_per_worker: _Optional[int] = ..., env_steps: _Optional[int] = ..., pretrained_weights: _Optional[str] = ...) -> None: ...

class Optimizer(_message.Message):
    __slots__ = ("name", "learning_rate", "momentum", "epsilon")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    name: str
    learning_rate: float
    momentum: float
    epsilon: float
    def __init__(self, name: _Optional[str] = ..., learning_rate: _Optional[float] = ..., momentum: _Optional[float] = ..., epsilon: _Optional[float] = ...) -> None: ...

class Threads(_message.Message):
    __slots__ = ("intra_op", "inter_op")
    INTRA_OP_FIELD_NUMBER: _ClassVar[int]
    INTER_OP_FIELD_NUMBER: _ClassVar[int]
    intra_op: int
    inter_op: int
    def __init__(self, intra_op: _Optional[int] = ..., inter_op: _Optional[int] = ...) -> None: ...

class EpochMetrics(_message.Message):
    __slots__ = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds", "samples_per_second")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    VAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    VAL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    seconds: float
    samples_per_second: float
    def __init__(self, epoch: _Optional[int] = ..., train_loss: _Optional[float] = ..., train_accuracy: _Optional[float] = ..., val_loss: _Optional[float] = ..., val_accuracy: _Optional[float] = ..., seconds: _Optional[float] = ..., samples_per_second: _Optional[float] = ...) -> None: ...

class ModelExport(_message.Message):
    __slots__ = ("model_name", "version", "format", "path", "sha256", "max_abs_diff")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: str
    format: str
    path: str
    sha256: str
    max_abs_diff: float
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[str] = ..., format: _Optional[str] = ..., path: _Optional[str] = ..., sha256: _Optional[str] = ..., max_abs_diff: _Optional[float] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "spec", "state", "error", "created_at", "started_at", "finished_at", "device", "framework_version", "parameter_count", "epochs", "train_seconds", "test_loss", "test_accuracy", "confusion_matrix", "num_classes", "peak_rss_bytes", "peak_gpu_bytes", "exports", "warmup_seconds", "steady_samples_per_second", "time_to_target_seconds", "target_epoch", "fairness", "threads", "cpu_set", "baseline_rss_bytes", "warmup_steps", "steady_seconds", "steady_samples", "window_samples_per_second", "overlapped_jobs", "test_predictions", "precision", "task", "throughput_unit", "data_peak_rss_bytes", "world_size", "workers", "communication", "reinforcement", "fine_tuning")
    class FairnessEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    FRAMEWORK_VERSION_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_COUNT_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TEST_LOSS_FIELD_NUMBER: _ClassVar[int]
    TEST_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    CONFUSION_MATRIX_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    PEAK_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    PEAK_GPU_BYTES_FIELD_NUMBER: _ClassVar[int]
    EXPORTS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STEADY_SAMPLES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_TARGET_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TARGET_EPOCH_FIELD_NUMBER: _ClassVar[int]
    FAIRNESS_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    CPU_SET_FIELD_NUMBER: _ClassVar[int]
    BASELINE_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    WARMUP_STEPS_FIELD_NUMBER: _ClassVar[int]
    STEADY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STEADY_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SAMPLES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    OVERLAPPED_JOBS_FIELD_NUMBER: _ClassVar[int]
    TEST_PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_UNIT_FIELD_NUMBER: _ClassVar[int]
    DATA_PEAK_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    COMMUNICATION_FIELD_NUMBER: _ClassVar[int]
    REINFORCEMENT_FIELD_NUMBER: _ClassVar[int]
    FINE_TUNING_FIELD_NUMBER: _ClassVar[int]
    id: str
    spec: JobSpec
    state: JobState
    error: str
    created_at: float
    started_at: float
    finished_at: float
    device: str
    framework_version: str
    parameter_count: int
    epochs: _containers.RepeatedCompositeFieldContainer[EpochMetrics]
    train_seconds: float
    test_loss: float
    test_accuracy: float
    confusion_matrix: _containers.RepeatedScalarFieldContainer[int]
    num_classes: int
    peak_rss_bytes: int
    peak_gpu_bytes: int
    exports: _containers.RepeatedCompositeFieldContainer[ModelExport]
    warmup_seconds: float
    steady_samples_per_second: float
    time_to_target_seconds: float
    target_epoch: int
    fairness: _containers.ScalarMap[str, str]
    threads: Threads
    cpu_set: _containers.RepeatedScalarFieldContainer[int]
    baseline_rss_bytes: int
    warmup_steps: int
    steady_seconds: float
    steady_samples: int
    window_samples_per_second: _containers.RepeatedScalarFieldContainer[float]
    overlapped_jobs: _containers.RepeatedScalarFieldContainer[str]
    test_predictions: _containers.RepeatedScalarFieldContainer[int]
    precision: str
    task: str
    throughput_unit: str
    data_peak_rss_bytes: int
    world_size: int
    workers: _containers.RepeatedCompositeFieldContainer[WorkerRecord]
    communication: Communication
    reinforcement: Reinforcement
    fine_tuning: FineTuning
    def __init__(self, id: _Optional[str] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., state: _Optional[_Union[JobState, str]] = ..., error: _Optional[str] = ..., created_at: _Optional[float] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., device: _Optional[str] = ..., framework_version: _Optional[str] = ..., parameter_count: _Optional[int] = ..., epochs: _Optional[_Iterable[_Union[EpochMetrics, _Mapping]]] = ..., train_seconds: _Optional[float] = ..., test_loss: _Optional[float] = ..., test_accuracy: _Optional[float] = ..., confusion_matrix: _Optional[_Iterable[int]] = ..., num_classes: _Optional[int] = ..., peak_rss_bytes: _Optional[int] = ..., peak_gpu_bytes: _Optional[int] = ..., exports: _Optional[_Iterable[_Union[ModelExport, _Mapping]]] = ..., warmup_seconds: _Optional[float] = ..., steady_samples_per_second: _Optional[float] = ..., time_to_target_seconds: _Optional[float] = ..., target_epoch: _Optional[int] = ..., fairness: _Optional[_Mapping[str, str]] = ..., threads: _Optional[_Union[Threads, _Mapping]] = ..., cpu_set: _Optional[_Iterable[int]] = ..., baseline_rss_bytes: _Optional[int] = ..., warmup_steps: _Optional[int] = ..., steady_seconds: _Optional[float] = ..., steady_samples: _Optional[int] = ..., window_samples_per_second: _Optional[_Iterable[float]] = ..., overlapped_jobs: _Optional[_Iterable[str]] = ..., test_predictions: _Optional[_Iterable[int]] = ..., precision: _Optional[str] = ..., task: _Optional[str] = ..., throughput_unit: _Optional[str] = ..., data_peak_rss_bytes: _Optional[int] = ..., world_size: _Optional[int] = ..., workers: _Optional[_Iterable[_Union[WorkerRecord, _Mapping]]] = ..., communication: _Optional[_Union[Communication, _Mapping]] = ..., reinforcement: _Optional[_Union[Reinforcement, _Mapping]] = ..., fine_tuning: _Optional[_Union[FineTuning, _Mapping]] = ...) -> None: ...

class WorkerRecord(_message.Message):
    __slots__ = ("rank", "pid", "samples", "steady_samples", "steady_seconds", "steady_samples_per_second", "threads", "cpu_set")
    RANK_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    STEADY_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    STEADY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STEADY_SAMPLES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    CPU_SET_FIELD_NUMBER: _ClassVar[int]
    rank: int
    pid: int
    samples: int
    steady_samples: int
    steady_seconds: float
    steady_samples_per_second: float
    threads: Threads
    cpu_set: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, rank: _Optional[int] = ..., pid: _Optional[int] = ..., samples: _Optional[int] = ..., steady_samples: _Optional[int] = ..., steady_seconds: _Optional[float] = ..., steady_samples_per_second: _Optional[float] = ..., threads: _Optional[_Union[Threads, _Mapping]] = ..., cpu_set: _Optional[_Iterable[int]] = ...) -> None: ...

class Communication(_message.Message):
    __slots__ = ("launcher", "strategy", "backend", "all_reduce", "bucket_bytes", "sharding")
    LAUNCHER_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    ALL_REDUCE_FIELD_NUMBER: _ClassVar[int]
    BUCKET_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHARDING_FIELD_NUMBER: _ClassVar[int]
    launcher: str
    strategy: str
    backend: str
    all_reduce: str
    bucket_bytes: int
    sharding: str
    def __init__(self, launcher: _Optional[str] = ..., strategy: _Optional[str] = ..., backend: _Optional[str] = ..., all_reduce: _Optional[str] = ..., bucket_bytes: _Optional[int] = ..., sharding: _Optional[str] = ...) -> None: ...

class Reinforcement(_message.Message):
    __slots__ = ("environment", "episode_rewards", "env_steps", "episodes_to_solve", "steps_to_solve", "seconds_to_solve", "solve_threshold", "solve_window", "steps_per_second", "network_seconds", "environment_seconds", "optimizer_steps", "evaluations", "evaluation_rewards", "evaluation_env_steps", "evaluation_seconds")
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    EPISODE_REWARDS_FIELD_NUMBER: _ClassVar[int]
    ENV_STEPS_FIELD_NUMBER: _ClassVar[int]
    EPISODES_TO_SOLVE_FIELD_NUMBER: _ClassVar[int]
    STEPS_TO_SOLVE_FIELD_NUMBER: _ClassVar[int]
    SECONDS_TO_SOLVE_FIELD_NUMBER: _ClassVar[int]
    SOLVE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SOLVE_WINDOW_FIELD_NUMBER: _ClassVar[int]
    STEPS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    NETWORK_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_STEPS_FIELD_NUMBER: _ClassVar[int]
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_REWARDS_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_ENV_STEPS_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    environment: str
    episode_rewards: _containers.RepeatedScalarFieldContainer[float]
    env_steps: int
    episodes_to_solve: int
    steps_to_solve: int
    seconds_to_solve: float
    solve_threshold: float
    solve_window: int
    steps_per_second: float
    network_seconds: float
    environment_seconds: float
    optimizer_steps: int
    evaluations: int
    evaluation_rewards: _containers.RepeatedScalarFieldContainer[float]
    evaluation_env_steps: int
    evaluation_seconds: float
    def __init__(self, environment: _Optional[str] = ..., episode_rewards: _Optional[_Iterable[float]] = ..., env_steps: _Optional[int] = ..., episodes_to_solve: _Optional[int] = ..., steps_to_solve: _Optional[int] = ..., seconds_to_solve: _Optional[float] = ..., solve_threshold: _Optional[float] = ..., solve_window: _Optional[int] = ..., steps_per_second: _Optional[float] = ..., network_seconds: _Optional[float] = ..., environment_seconds: _Optional[float] = ..., optimizer_steps: _Optional[int] = ..., evaluations: _Optional[int] = ..., evaluation_rewards: _Optional[_Iterable[float]] = ..., evaluation_env_steps: _Optional[int] = ..., evaluation_seconds: _Optional[float] = ...) -> None: ...

class FineTuning(_message.Message):
    __slots__ = ("weights_path", "weights_sha256", "frozen_parameters", "frozen_max_change")
    WEIGHTS_PATH_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    FROZEN_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    FROZEN_MAX_CHANGE_FIELD_NUMBER: _ClassVar[int]
    weights_path: str
    weights_sha256: str
    frozen_parameters: int
    frozen_max_change: float
    def __init__(self, weights_path: _Optional[str] = ..., weights_sha256: _Optional[str] = ..., frozen_parameters: _Optional[int] = ..., frozen_max_change: _Optional[float] = ...) -> None: ...

class BatchProgress(_message.Message):
    __slots__ = ("epoch", "batch", "batches", "loss")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    batch: int
    batches: int
    loss: float
    def __init__(self, epoch: _Optional[int] = ..., batch: _Optional[int] = ..., batches: _Optional[int] = ..., loss: _Optional[float] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("job_id", "job", "epoch", "progress")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    job: Job
    epoch: EpochMetrics
    progress: BatchProgress
    def __init__(self, job_id: _Optional[str] = ..., job: _Optional[_Union[Job, _Mapping]] = ..., epoch: _Optional[_Union[EpochMetrics, _Mapping]] = ..., progress: _Optional[_Union[BatchProgress, _Mapping]] = ...) -> None: ...

class CreateJobRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: JobSpec
    def __init__(self, spec: _Optional[_Union[JobSpec, _Mapping]] = ...) -> None: ...

class CreateJobResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...
