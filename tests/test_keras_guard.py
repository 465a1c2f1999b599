"""Importing towerkit selects Keras 2, or explains why it cannot."""

from conftest import run_python


def test_import_selects_legacy_keras_before_tensorflow():
    result = run_python(
        "import os; os.environ.pop('TF_USE_LEGACY_KERAS', None)\n"
        "import towerkit, tensorflow as tf\n"
        "print(os.environ['TF_USE_LEGACY_KERAS'], tf.keras.layers.Layer.__module__.split('.')[0])",
        env={"TF_USE_LEGACY_KERAS": ""},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "tf_keras"]


def test_tensorflow_bound_to_keras_3_first_raises_import_error():
    result = run_python(
        "import os; os.environ.pop('TF_USE_LEGACY_KERAS', None)\n"
        "import tensorflow as tf; tf.keras.layers.Layer\n"
        "try:\n"
        "    import towerkit\n"
        "except ImportError as exc:\n"
        "    print('ImportError:', exc)\n",
    )
    assert result.returncode == 0, result.stderr
    assert "ImportError:" in result.stdout
    assert "import towerkit before tensorflow" in result.stdout and "TF_USE_LEGACY_KERAS=1" in result.stdout


def test_explicit_keras_3_setting_is_refused():
    result = run_python("import towerkit", env={"TF_USE_LEGACY_KERAS": "0"})
    assert result.returncode != 0 and "needs Keras 2" in result.stderr
