"""`lav2 info`: parameter counts from `jax.eval_shape` only, checked against counts derived by hand."""

import json

from lav2_jax.cli.info import param_report
from lav2_jax.cli.main import main

D, F, L, N, V = 4096, 11008, 32, 32, 32000  # LLaMA-1 7B


def test_llama1_7b_base_count():
    attn, ffn, norms = 4 * D * D, 3 * D * F, 2 * D
    assert 2 * V * D + L * (attn + ffn + norms) + D == 6_738_415_616
    report = param_report("llama1-7b", "none")
    assert report["base_llama"] == report["total"] == 6_738_415_616


def test_release_bias_groups():
    r = param_report("llama1-7b", "release-bias")
    prompts, gates = 31 * 10 * D, L * N
    biases = L * (3 * D + 2 * F)  # wq wo w2 (D) + w1 w3 (F)
    norms = L * 2 * D + D
    connector = 8 * 7_087_872 + 590_592 + 1_536 + 10 * 768 + 3_149_824 + 8_192
    pretrain, finetune = r["recipes"]["release-pretrain"], r["recipes"]["release-finetune"]
    assert pretrain["caption"] == connector + prompts + gates == 61_731_584
    assert pretrain["instruction"] == 0
    assert finetune["instruction"] == biases + norms == 1_363_968
    assert r["adapter_total"] == pretrain["caption"] + finetune["instruction"] == 63_095_552


def test_paper_groups():
    r = param_report("llama1-7b", "paper")
    bias_scale = L * 2 * (4 * D + 2 * F + D)  # s and b on wq wk wv wo (D), w1 w3 (F), w2 (D)
    norms, prompts, gates = L * 2 * D + D, 31 * 10 * D, L * N
    joint = r["recipes"]["paper-joint"]
    assert joint["instruction"] == bias_scale + norms + prompts + gates == 4_256_768
    assert joint["caption"] == 10_853_408  # connector (10,853,376) + the first layer's visual gate (32)


def test_cli_json_and_table(capsys):
    assert main(["info", "--model", "llama1-65b", "--adapter", "chat65b", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["base_llama"] == 65_285_660_672
    # input-side scale [in] + bias [out] on every linear, plus the norms
    D65, F65, L65 = 8192, 22016, 80
    per_layer = 4 * (D65 + D65) + 2 * (D65 + F65) + (F65 + D65) + 2 * D65
    assert report["recipes"]["chat65b"]["instruction"] == L65 * per_layer + D65
    assert main(["info", "--model", "tiny", "--adapter", "lora"]) == 0
    assert "adapter total" in capsys.readouterr().out


def test_cli_bad_input_is_a_clean_error(capsys):
    assert main(["info", "--model", "llama9-1b"]) == 2
    assert "unknown model preset 'llama9-1b'" in capsys.readouterr().err
    assert main(["info", "--model", "tiny", "--adapter", "paper"]) == 2  # 31 prompted layers on a 4-layer model
    assert "prompt_layers=31 exceeds n_layers=4" in capsys.readouterr().err
