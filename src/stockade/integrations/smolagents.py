"""A smolagents Python executor that runs a ``CodeAgent``'s code in a Stockade sandbox.

``pip install 'stockade[smolagents]'``. :class:`StockadeExecutor` fills the slot that
``executor_type="e2b"`` fills in smolagents: a ``RemotePythonExecutor`` whose code runs in
a stateful Jupyter kernel (the ``code-interpreter`` image), so variables persist between
the agent's steps, its tools are defined there by ``send_tools`` and its state by
``send_variables``, and ``final_answer(...)`` ends the run. The sandbox is made on the
first code the agent runs, terminated by ``cleanup()`` (which ``CodeAgent.cleanup()`` and
``with CodeAgent(...)`` call), and ended by the server after ``idle_timeout`` seconds
without a call if nobody does.

Example::

    from smolagents import CodeAgent
    from stockade.integrations.smolagents import StockadeExecutor

    executor = StockadeExecutor([], logger, idle_timeout=300)
    with CodeAgent(tools=[], model=model, executor=executor) as agent:
        agent.run("What is the 20th Fibonacci number?")
"""

from __future__ import annotations

import base64
from io import BytesIO
from typing import Any

from stockade.errors import AuthenticationError, StockadeConnectionError, StockadeError
from stockade.execution import Execution
from stockade.integrations._session import ManagedSandbox, clip, missing_extra

try:
    import PIL.Image
    from smolagents.local_python_executor import CodeOutput
    from smolagents.monitoring import AgentLogger, LogLevel
    from smolagents.remote_executors import RemotePythonExecutor
    from smolagents.utils import AgentError
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise missing_extra("smolagents", "smolagents") from exc

__all__ = ["StockadeExecutor"]

# The formats of a main result that become the step's output, in E2BExecutor's order of
# preference (images first: they become PIL images, as smolagents expects).
_IMAGE_FORMATS = ("jpeg", "png")
_DATA_FORMATS = ("html", "javascript", "json", "latex", "markdown", "pdf", "svg", "text")


class StockadeExecutor(RemotePythonExecutor):  # type: ignore[misc]  # smolagents is untyped
    """Runs a smolagents ``CodeAgent``'s Python in a Stockade sandbox.

    ``additional_imports`` are pip-installed into the sandbox before the first code runs
    (the sandbox needs network for that); ``logger`` is the agent's ``AgentLogger``;
    ``allow_pickle`` is smolagents' own switch for final answers that JSON cannot carry.
    The rest is a :class:`~stockade.integrations.ManagedSandbox` (``sandbox=``) or its
    arguments (``image``, ``idle_timeout``, ``timeout``, ``command_timeout``,
    ``max_output``, ``create_options``, ``client``, ``url``, ``token``); the image must
    have the Python kernel (``code-interpreter``, the default).

    Example::

        executor = StockadeExecutor([], AgentLogger(), create_options={"memory": 1024})
        out = executor("x = 6 * 7\\nx")
        assert out.output == "42"
        executor.cleanup()
    """

    def __init__(
        self,
        additional_imports: list[str],
        logger: AgentLogger,
        allow_pickle: bool = False,
        *,
        sandbox: ManagedSandbox | None = None,
        **options: Any,
    ) -> None:
        super().__init__(additional_imports, logger, allow_pickle)
        self.sandbox = sandbox if sandbox is not None else ManagedSandbox(**options)
        # Installed with the first code run, so that making the executor starts nothing.
        self._pending_imports = list(additional_imports)

    def __repr__(self) -> str:
        return f"<StockadeExecutor {self.sandbox!r}>"

    def run_code_raise_errors(self, code: str) -> CodeOutput:
        """Run ``code`` in the sandbox's kernel; what it printed and its value, the final
        answer when it called ``final_answer``, or ``AgentError`` for an exception (which
        the agent shows its model)."""
        if self._pending_imports:
            pending, self._pending_imports = self._pending_imports, []
            self.installed_packages = self.install_packages(pending)
        execution = self._execute(code)
        logs = clip("".join(execution.logs.stdout), self.sandbox.max_output)
        error = execution.error
        if error is not None:
            if error.name == RemotePythonExecutor.FINAL_ANSWER_EXCEPTION:
                answer = self._deserialize_final_answer(error.value, self.allow_pickle)
                return CodeOutput(output=answer, logs=logs, is_final_answer=True)
            message = clip(
                f"{logs}\nExecuting code yielded an error:\n{error.name}\n{error.value}\n"
                f"{error.traceback}",
                self.sandbox.max_output,
            )
            raise AgentError(message, self.logger)
        return CodeOutput(output=self._main_output(execution), logs=logs, is_final_answer=False)

    def _execute(self, code: str) -> Execution:
        try:
            return self.sandbox.use(
                lambda sb: sb.run_code(code, timeout=self.sandbox.command_timeout)
            )
        except (AuthenticationError, StockadeConnectionError):
            raise  # the operator's to fix: the run should stop, not the model retry
        except StockadeError as exc:
            raise AgentError(f"the sandbox could not run the code: {exc}", self.logger) from exc

    @staticmethod
    def _main_output(execution: Execution) -> Any:
        for result in execution.results:
            if not result.is_main_result:
                continue
            for name in _IMAGE_FORMATS:
                data = getattr(result, name)
                if data is not None:
                    return PIL.Image.open(BytesIO(base64.b64decode(data)))
            for name in _DATA_FORMATS:
                value = getattr(result, name)
                if value is not None:
                    return value
        return None

    def cleanup(self) -> None:
        """Terminate the sandbox (``CodeAgent.cleanup()`` calls this)."""
        self.logger.log("Shutting down the Stockade sandbox...", level=LogLevel.INFO)
        self.sandbox.close()
