import re
import sys
from pathlib import Path

from seqtext.cli import main

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def test_recipe_reference_is_current():
    sys.path.insert(0, str(REPO / "scripts"))
    from update_readme import render

    assert render(README) == README, "run: python scripts/update_readme.py"


def test_every_cli_command_and_option_is_documented():
    """README's CLI table lists every command with every one of its options."""
    table = README.split("## CLI reference", 1)[1].split("\n## ", 1)[0]
    for name, command in main.commands.items():
        rows = [line for line in table.splitlines() if line.startswith(f"| `seqtext {name} ")]
        assert len(rows) == 1, name
        synopsis = rows[0].split("` |", 1)[0]
        for option in (o for p in command.params for o in p.opts if o.startswith("--")):
            assert option in synopsis, f"seqtext {name} {option}"


def test_setup_is_two_commands():
    block = README.split("## Setup", 1)[1].split("```", 2)[1]
    commands = [line for line in block.splitlines()[1:] if line.strip() and not line.startswith("#")]
    assert len(commands) == 2 and "demo_sentiment" in commands[0] and "pytest" in commands[1]


def test_ci_runs_the_readmes_test_command_and_fails_with_it():
    """.ci/run runs README's second setup command as it is, in a subshell, so that a failed
    install fails CI instead of skipping the tests."""
    setup = (REPO / "README.md").read_text().split("## Setup", 1)[1].split("```")[1].strip().splitlines()
    assert len(setup) == 2  # one command to install and run the demo, one to install and run the tests
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert f"( {setup[1]} )" in ci and "set -euo pipefail" in ci


def test_shipped_recipes_parse():
    from seqtext.recipe import load_recipe

    for path in sorted((REPO / "recipes").glob("*.toml")):
        assert load_recipe(path).task in {"classify", "tag", "lm"}


def test_readme_mentions_no_torchtext_reason():
    assert re.search(r"torchtext.*discontinued", README, re.S)


def test_the_readme_spacy_config_block_is_a_valid_config():
    """spaCy's config parser keeps a comment after a value as part of the value, so the
    README's ini block must parse to numbers, booleans and null, and build the layer."""
    import spacy
    from thinc.api import Config

    block = README.split("```ini\n", 1)[1].split("```", 1)[0]
    parents = "[components]\n[components.ner]\n[components.ner.model]\n"
    layer = Config().from_str(parents + block)["components"]["ner"]["model"]["tok2vec"]
    assert (layer["width"], layer["depth"], layer["casing"], layer["init_from"]) == (128, 1, True, None)
    assert spacy.registry.resolve({"layer": layer})["layer"].name
