import logging
import subprocess
import sys
import time

from flan_t5_detox.contract.failure import (
    DUMP_STACKS,
    EXIT_BAD_INPUT,
    EXIT_ERROR,
    JOB_HANDLER_NAME,
    JobInputError,
    run_job,
    setup_logging,
    write_failure,
)


def test_a_completed_job_returns_its_code_and_writes_no_failure(tmp_path):
    failure = tmp_path / "output" / "failure"
    assert run_job(lambda: 0, [failure]) == 0
    assert not failure.exists()


def test_bad_input_is_one_line_in_each_failure_file_and_on_stderr(tmp_path, capsys):
    files = [tmp_path / "output" / "failure", tmp_path / "output" / "message"]

    def body() -> int:
        raise JobInputError("batch_size must be >= 1")

    assert run_job(body, files) == EXIT_BAD_INPUT == 2
    for path in files:
        assert path.read_text() == "Bad input: batch_size must be >= 1\n"
    assert capsys.readouterr().err == "Bad input: batch_size must be >= 1\n"


def test_any_other_error_fails_the_job_with_its_traceback_in_the_file(tmp_path, capsys):
    failure = tmp_path / "failure"

    def body() -> int:
        raise RuntimeError("boom")

    assert run_job(body, [failure]) == EXIT_ERROR == 1
    text = failure.read_text()
    assert text.startswith("RuntimeError: boom\n\nTraceback") and "in body" in text
    assert capsys.readouterr().err == "RuntimeError: boom\n"  # the first line only


def test_write_failure_ends_the_reason_with_one_newline(tmp_path):
    write_failure(tmp_path / "a" / "failure", "reason")
    write_failure(tmp_path / "b" / "failure", "reason\n")
    assert (tmp_path / "a" / "failure").read_text() == (tmp_path / "b" / "failure").read_text() == "reason\n"


def test_job_logging_follows_whatever_stdout_is_now(monkeypatch, capsys):
    setup_logging()
    try:
        handlers = [h for h in logging.getLogger().handlers if h.get_name() == JOB_HANDLER_NAME]
        assert len(handlers) == 1
        logging.getLogger("flan_t5_detox.test").info("to the first stdout")
        first = capsys.readouterr().out
        monkeypatch.setattr(sys, "stdout", sys.stderr)  # a stream swapped after setup
        assert handlers[0].stream is sys.stderr
        assert "INFO flan_t5_detox.test: to the first stdout" in first
        assert logging.getLogger("transformers").level == logging.ERROR
    finally:
        logging.getLogger().removeHandler(handlers[0])


def test_a_job_process_prints_its_stacks_on_the_dump_signal_and_goes_on():
    # A job process waiting in a function of its own (here: for a line on stdin).
    program = (
        "import sys\n"
        "from flan_t5_detox.contract.failure import setup_logging\n"
        "def waiting_for_its_peers():\n"
        "    print('ready', flush=True)\n"
        "    return sys.stdin.readline()\n"
        "setup_logging()\n"
        "print('went on with', waiting_for_its_peers().strip(), flush=True)\n"
    )
    job = subprocess.Popen(
        [sys.executable, "-c", program],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert job.stdout.readline() == "ready\n"
    job.send_signal(DUMP_STACKS)
    time.sleep(0.5)  # the dump is written by the signal handler, at once
    out, err = job.communicate("the step\n", timeout=30)
    assert job.returncode == 0, err
    assert out == "went on with the step\n"
    assert "waiting_for_its_peers" in err and "Current thread" in err
