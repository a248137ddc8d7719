"""What a command's bad input must produce, for the tests of every command: exit code
2 and one line on stderr, no traceback, naming what is wrong."""


def one_error(capsys, code, *expected):
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    for text in expected:
        assert text in captured.err, captured.err
    return captured.err
