"""DeepExec's Python SDK: run sandboxed code and text generation as jobs on a DeepExec server.

``DeepExecClient`` (sync) and ``DeepExecAsyncClient`` (asyncio) have the same methods. With no
arguments they find the server and API key in ``$DEEPEXEC_BASE_URL`` / ``$DEEPEXEC_API_KEY`` or
in the credentials file ``deepexec serve`` writes, so this is enough on the server's machine::

    from deepexec_sdk import DeepExecClient

    with DeepExecClient() as client:
        status = client.execute_code_and_wait("print('Hello, World!')")
        print(status.status, status.result)

Importing this package never imports the server or its dependencies.
"""

from ._version import __version__
from .async_client import DeepExecAsyncClient
from .client import DeepExecClient
from .errors import (
    DeepExecError,
    JobWaitTimeoutError,
    MCPAuthenticationError,
    MCPConflictError,
    MCPConnectionError,
    MCPError,
    MCPExecutionError,
    MCPJobNotFoundError,
    MCPProtocolError,
    MCPRateLimitError,
    MCPServerError,
    MCPTimeoutError,
    MCPValidationError,
)
from .job_data import CodeExecutionData, TextGenerationData
from .types import (
    JobError,
    JobStatus,
    JobType,
    LanguageInfo,
    LanguageListResponse,
    MCPBatchCancelResponse,
    MCPBatchJob,
    MCPBatchResponse,
    MCPBatchStatusResponse,
    MCPCancelJobResponse,
    MCPJobEvent,
    MCPJobListResponse,
    MCPJobResponse,
    MCPJobStatusResponse,
    MCPJobSummary,
    MCPJobsWaitResponse,
    ModelInfo,
    ModelListResponse,
)

__all__ = [
    "CodeExecutionData",
    "DeepExecAsyncClient",
    "DeepExecClient",
    "DeepExecError",
    "JobError",
    "JobStatus",
    "JobType",
    "JobWaitTimeoutError",
    "LanguageInfo",
    "LanguageListResponse",
    "MCPAuthenticationError",
    "MCPBatchCancelResponse",
    "MCPBatchJob",
    "MCPBatchResponse",
    "MCPBatchStatusResponse",
    "MCPCancelJobResponse",
    "MCPConflictError",
    "MCPConnectionError",
    "MCPError",
    "MCPExecutionError",
    "MCPJobEvent",
    "MCPJobListResponse",
    "MCPJobNotFoundError",
    "MCPJobResponse",
    "MCPJobStatusResponse",
    "MCPJobSummary",
    "MCPJobsWaitResponse",
    "MCPProtocolError",
    "MCPRateLimitError",
    "MCPServerError",
    "MCPTimeoutError",
    "MCPValidationError",
    "ModelInfo",
    "ModelListResponse",
    "TextGenerationData",
    "__version__",
]
