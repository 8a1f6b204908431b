"""Drives `dendrite serve` with the real `openai` Python client (tests/serve.rs runs it).

Usage: openai_client.py BASE_URL API_KEY MODE
  MODE chat:   SmolLM2-135M-Instruct: models, chat (whole, streamed, logprobs, steered), a
               completion, errors, a disconnect that stops the generation.
  MODE sae:    the sample model and its SAE: completions with a steered and a clamped latent.
Prints one JSON object of what it saw; the Rust test checks it.
"""

import json
import sys
import time
import urllib.request

import openai

base, key, mode = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=120)
out = {}


def status():
    req = urllib.request.Request(
        base.removesuffix("/v1") + "/dendrite/status",
        headers={"Authorization": f"Bearer {key}"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def error_of(call):
    try:
        call()
    except openai.APIStatusError as e:
        return {"status": e.status_code, "message": str(e), "class": type(e).__name__}
    return None


model = client.models.list().data[0].id
out["model"] = model

if mode == "chat":
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    whole = client.chat.completions.create(
        model=model, messages=messages, temperature=0, max_tokens=24
    )
    out["chat"] = {
        "content": whole.choices[0].message.content,
        "role": whole.choices[0].message.role,
        "finish_reason": whole.choices[0].finish_reason,
        "usage": whole.usage.model_dump(),
    }
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        temperature=0,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
    out["chat_stream"] = {"pieces": pieces, "finish_reason": finish, "usage": usage}

    lp = client.chat.completions.create(
        model=model,
        messages=messages,
        temperature=0,
        max_tokens=8,
        logprobs=True,
        top_logprobs=3,
    )
    out["chat_logprobs"] = [
        {
            "token": t.token,
            "logprob": t.logprob,
            "top": [(a.token, a.logprob) for a in t.top_logprobs],
        }
        for t in lp.choices[0].logprobs.content
    ]
    out["chat_logprobs_content"] = lp.choices[0].message.content

    steered = client.chat.completions.create(
        model=model,
        messages=messages,
        temperature=0,
        max_tokens=24,
        extra_body={
            "dendrite": {"interventions": [{"clamp": "blocks.3.mlp.hook_post:12=40"}]}
        },
    )
    out["steered"] = steered.choices[0].message.content

    completion = client.completions.create(
        model=model, prompt="The capital of France is", temperature=0, max_tokens=8, logprobs=2
    )
    out["completion"] = {
        "text": completion.choices[0].text,
        "tokens": completion.choices[0].logprobs.tokens,
        "token_logprobs": completion.choices[0].logprobs.token_logprobs,
        "finish_reason": completion.choices[0].finish_reason,
    }
    pieces = []
    for chunk in client.completions.create(
        model=model, prompt="The capital of France is", temperature=0, max_tokens=8, stream=True
    ):
        pieces.append(chunk.choices[0].text if chunk.choices else "")
    out["completion_stream"] = "".join(pieces)

    out["errors"] = {
        "unknown_extension_field": error_of(
            lambda: client.chat.completions.create(
                model=model,
                messages=messages,
                max_tokens=2,
                extra_body={"dendrite": {"interventions": [{"clampp": "x"}]}},
            )
        ),
        "bad_clamp": error_of(
            lambda: client.chat.completions.create(
                model=model,
                messages=messages,
                max_tokens=2,
                extra_body={"dendrite": {"interventions": [{"clamp": "blocks.3.mlp.hook_post:99999=1"}]}},
            )
        ),
        "wrong_model": error_of(
            lambda: client.chat.completions.create(model="gpt-9", messages=messages, max_tokens=2)
        ),
        "too_many_tokens": error_of(
            lambda: client.completions.create(model=model, prompt="Hi", max_tokens=10**7)
        ),
        "n_2": error_of(
            lambda: client.chat.completions.create(model=model, messages=messages, n=2)
        ),
        "wrong_key": error_of(
            lambda: openai.OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list()
        ),
    }

    # A client that goes away mid-stream stops its generation.
    before = status()["engine"]["cancelled"]
    long = client.completions.create(
        model=model, prompt="Once upon a time", temperature=0, max_tokens=2000, stream=True
    )
    for i, _ in enumerate(long):
        if i == 3:
            break
    long.close()
    deadline = time.time() + 30
    while status()["engine"]["cancelled"] <= before and time.time() < deadline:
        time.sleep(0.1)
    engine = status()["engine"]
    out["disconnect"] = {"cancelled_before": before, "engine": engine}

elif mode == "sae":
    prompt = "To be, or not to be"
    runs = {}
    for name, interventions in [
        ("baseline", []),
        ("steered", [{"steer_latent": "5:40"}]),
        ("clamped", [{"clamp_latent": "5=30"}]),
    ]:
        r = client.completions.create(
            model=model,
            prompt=prompt,
            temperature=0,
            max_tokens=12,
            extra_body={"dendrite": {"interventions": interventions, "at": "all"}},
        )
        runs[name] = r.choices[0].text
    out["sae"] = runs
    out["sae_missing"] = error_of(
        lambda: client.completions.create(
            model=model,
            prompt=prompt,
            max_tokens=2,
            extra_body={"dendrite": {"interventions": [{"steer_latent": "5:1", "sae": "nope"}]}},
        )
    )

print(json.dumps(out))
