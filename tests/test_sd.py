"""miniai.sd against diffusers, transformers and k-diffusion on a tiny random Stable Diffusion checkpoint written by the test."""
import importlib, json, pickle, shutil, socket
import pytest, torch
from kdiff import kdiff_sampling

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
from miniai.sd import UNet2DConditionModel, CLIPTextModel, StableDiffusion, sd15_configs, to_pil

PROMPTS = ["a photo of the cat", "the dog"]


def tiny_tokenizer(folder, max_len=16):
    "A CLIP BPE tokenizer over 65 tokens (letters, letters ending a word, a few merges, the special tokens)."
    letters = list("abcdefghijklmnopqrstuvwxyz")
    merges = ["t h", "th e</w>", "c a", "ca t</w>", "d o", "do g</w>", "p h", "o t", "ph ot", "phot o</w>"]
    toks = ["!", "<|startoftext|>", "<|endoftext|>"] + letters + [c + "</w>" for c in letters] + [m.replace(" ", "") for m in merges]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(toks)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_len)


def tiny_pipeline(tmp, seed=0):
    "A randomly initialised diffusers StableDiffusionPipeline with tiny components, and the folder it was saved to (safetensors)."
    tok = tiny_tokenizer(tmp / "tok")
    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=2, sample_size=8, norm_num_groups=16,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4)
    vae = diffusers.AutoencoderKL(block_out_channels=(16, 32), norm_num_groups=16, latent_channels=4, sample_size=16,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)
    te = transformers.CLIPTextModel(transformers.CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=37,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16, bos_token_id=1, eos_token_id=2, pad_token_id=2))
    sched = diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                                    set_alpha_to_one=False, steps_offset=1)
    pipe = diffusers.StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=te, tokenizer=tok, scheduler=sched, safety_checker=None,
                                             feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp / "sd", safe_serialization=True)
    return pipe, tmp / "sd"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pipe, folder = tiny_pipeline(tmp_path_factory.mktemp("tiny_sd"))
    return pipe, folder, StableDiffusion.from_pretrained(folder)


def ddim_ref(pipe):
    "The checkpoint's pipeline with a DDIMScheduler that ends at abar = 1, as miniai's ddim_sample does."
    return diffusers.StableDiffusionPipeline(**{**pipe.components, "scheduler": diffusers.DDIMScheduler.from_config(pipe.scheduler.config, set_alpha_to_one=True)})


def latents(b=2, seed=1): return torch.randn(b, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


# ---- the modules ----

UNET_CONFIGS = [
    # SD v1 style: 1x1-conv projections, one head count for all blocks, plain and cross-attention blocks
    dict(block_out_channels=(32, 64), layers_per_block=2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=24, attention_head_dim=4, norm_num_groups=8),
    # SD 2 style: linear projections, heads per block (the attention_head_dim quirk), two transformer layers, three levels
    dict(block_out_channels=(32, 64, 64), layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=24, attention_head_dim=(2, 4, 8),
         norm_num_groups=8, use_linear_projection=True, transformer_layers_per_block=2, upcast_attention=True),
]

@pytest.mark.parametrize("cfg", UNET_CONFIGS, ids=["sd1", "sd2"])
def test_unet_matches_diffusers(cfg):
    torch.manual_seed(0)
    ref = diffusers.UNet2DConditionModel(**cfg).eval()
    ours = UNet2DConditionModel.from_config(dict(ref.config)).eval()
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in ref.named_modules()]
    sd_ref = ref.state_dict()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in sd_ref.items()}
    ours.load_state_dict(sd_ref)
    g = torch.Generator().manual_seed(1)
    for hw, t in (((8, 8), torch.tensor([3, 999])), ((12, 10), 500), ((9, 7), torch.tensor(250.5))):   # odd sizes: upsample sizes forwarded
        x, c = torch.randn(2, 4, *hw, generator=g), torch.randn(2, 5, 24, generator=g)
        with torch.no_grad(): torch.testing.assert_close(ours(x, t, c), ref(x, t, c).sample, atol=1e-5, rtol=0)


def test_unet_sd15_tree_matches_diffusers():
    "The real SD v1.5 U-Net, built on the meta device: the same parameter names and shapes (860M parameters)."
    cfg = sd15_configs()["unet"]
    with torch.device("meta"):
        ours, ref = UNet2DConditionModel.from_config(cfg), diffusers.UNet2DConditionModel(**cfg)
        ref_te = transformers.CLIPTextModel(transformers.CLIPTextConfig(**sd15_configs()["text_encoder"]))
        ours_te = CLIPTextModel.from_config(sd15_configs()["text_encoder"])
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert sum(p.numel() for p in ours.parameters()) == 859_520_964
    assert {k: v.shape for k, v in ours_te.state_dict().items()} == {k: v.shape for k, v in ref_te.state_dict().items()}


def test_unet_unsupported_configs():
    base = UNET_CONFIGS[0]
    for extra, msg in ((dict(class_embed_type="timestep"), "class_embed_type"), (dict(resnet_time_scale_shift="scale_shift"), "resnet_time_scale_shift"),
                       (dict(addition_embed_type="text_time"), "addition_embed_type"), (dict(num_attention_heads=4), "num_attention_heads"),
                       (dict(some_new_feature=3), "some_new_feature"), (dict(attention_head_dim=5), "heads"),
                       (dict(down_block_types=("AttnDownBlock2D", "DownBlock2D")), "AttnDownBlock2D"),
                       (dict(mid_block_type="UNetMidBlock2DSimpleCrossAttn"), "mid_block_type"),
                       (dict(layers_per_block=(1, 2, 3)), "layers_per_block")):
        with pytest.raises(ValueError, match=msg): UNet2DConditionModel(**{**base, **extra})


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_clip_text_model_matches_transformers(act):
    conf = transformers.CLIPTextConfig(vocab_size=100, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                                       max_position_embeddings=20, bos_token_id=98, eos_token_id=99, pad_token_id=1, hidden_act=act)
    torch.manual_seed(0)
    ref = transformers.CLIPTextModel(conf).eval()
    ours = CLIPTextModel.from_config(conf.to_dict()).eval()
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in ref.named_modules()]
    ours.load_state_dict(ref.state_dict())
    ids = torch.randint(0, 100, (3, 20), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[0, 15:] = 0; mask[1, 5:] = 0
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), ref(ids).last_hidden_state, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours(ids, mask), ref(ids, attention_mask=mask).last_hidden_state, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours(ids[:, :7]), ref(ids[:, :7]).last_hidden_state, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="max_position_embeddings"): ours(torch.zeros(1, 21, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 100\)"): ours(torch.full((1, 3), 100))


def test_loaded_modules_match(tiny):
    "From the checkpoint folder: text encoder, U-Net and VAE decode equal the reference pipeline's on the same inputs."
    pipe, _, sd = tiny
    ids = sd.tokenize(PROMPTS)
    torch.testing.assert_close(ids, pipe.tokenizer(PROMPTS, padding="max_length", max_length=16, truncation=True, return_tensors="pt").input_ids)
    g = torch.Generator().manual_seed(0)
    x, z = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    with torch.no_grad():
        states = sd.text_encoder(ids)
        torch.testing.assert_close(states, pipe.text_encoder(ids).last_hidden_state, atol=1e-5, rtol=0)
        torch.testing.assert_close(sd.unet(x, torch.tensor([5, 801]), states), pipe.unet(x, torch.tensor([5, 801]), states).sample, atol=1e-5, rtol=0)
        torch.testing.assert_close(sd.vae.decode(z), pipe.vae.decode(z).sample, atol=1e-5, rtol=0)
        torch.testing.assert_close(sd.decode(z), (pipe.vae.decode(z / 0.18215).sample / 2 + 0.5).clamp(0, 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(sd.sched.abar, pipe.scheduler.alphas_cumprod.double(), atol=1e-6, rtol=0)


# ---- the pipeline ----

@pytest.mark.parametrize("kw", [dict(steps=5, guidance_scale=7.5), dict(steps=4, guidance_scale=3., negative_prompt=["dog", "a cat"]),
                                dict(steps=3, guidance_scale=1.)], ids=["cfg", "negative", "no-cfg"])
def test_generate_ddim_matches_diffusers(tiny, kw):
    pipe, _, sd = tiny
    kw = dict(kw)
    steps = kw.pop("steps")
    lat = latents()
    ref = ddim_ref(pipe)(PROMPTS, num_inference_steps=steps, latents=lat, output_type="pt", **kw).images
    ours = sd.generate(PROMPTS, steps=steps, sampler="ddim", latents=lat, progress=False, **kw)
    assert ours.dtype == torch.float32 and ours.shape == (2, 3, 16, 16)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_generate_single_prompt_and_default_size(tiny):
    pipe, _, sd = tiny
    g = torch.Generator().manual_seed(3)
    ref = ddim_ref(pipe)("the cat", num_inference_steps=3, generator=torch.Generator().manual_seed(3), output_type="pt").images
    torch.testing.assert_close(sd.generate("the cat", steps=3, sampler="ddim", generator=g, progress=False), ref, atol=1e-4, rtol=0)


class CompVisAdapter:
    "diffusers' U-Net with classifier-free guidance, dressed as a CompVis LatentDiffusion model for k-diffusion's CompVisDenoiser."
    def __init__(self, pipe, cond, uncond, scale):
        self.pipe, self.cond, self.uncond, self.scale = pipe, cond, uncond, scale
        self.alphas_cumprod = pipe.scheduler.alphas_cumprod
    def apply_model(self, x, t):
        u, c = self.pipe.unet(torch.cat([x, x]), torch.cat([t, t]), encoder_hidden_states=torch.cat([self.uncond, self.cond])).sample.chunk(2)
        return u + self.scale * (c - u)

@pytest.mark.parametrize("sampler,karras", [("euler", True), ("euler_ancestral", True), ("heun", True), ("lms", True), ("dpmpp_2m", True),
                                            ("dpmpp_2m", False), ("euler_ancestral", False)])
def test_karras_samplers_match_kdiffusion(tiny, sampler, karras):
    K = kdiff_sampling()
    if K is None: pytest.skip("k-diffusion is not installed")
    ext = importlib.import_module("k_diffusion.external")
    pipe, _, sd = tiny
    with torch.no_grad(): cond, uncond = pipe.encode_prompt(PROMPTS, "cpu", 1, True)
    den = ext.CompVisDenoiser(CompVisAdapter(pipe, cond, uncond, 7.5))
    n, lat = 5, latents()
    sig = K.get_sigmas_karras(n, den.sigma_min.item(), den.sigma_max.item()) if karras else den.get_sigmas(n)
    kw, gen = {}, None
    if sampler == "euler_ancestral":
        gk, gen = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        kw = dict(noise_sampler=lambda s, s_next: torch.randn(lat.shape, generator=gk))
    with torch.no_grad():
        x0 = getattr(K, f"sample_{sampler}")(den, lat * sig[0], sig, disable=True, **kw)
        ref = (pipe.vae.decode(x0 / pipe.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    ours = sd.generate(PROMPTS, steps=n, guidance_scale=7.5, sampler=sampler, latents=lat, karras_sigmas=karras, generator=gen, progress=False)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("strength", [0.6, 1.0])
def test_img2img_ddim_matches_diffusers(tiny, strength):
    pipe, _, sd = tiny
    ref_pipe = diffusers.StableDiffusionImg2ImgPipeline(**ddim_ref(pipe).components)
    ref_pipe.set_progress_bar_config(disable=True)
    img = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(5)).repeat(2, 1, 1, 1)
    ref = ref_pipe(PROMPTS, image=img, strength=strength, num_inference_steps=10, generator=torch.Generator().manual_seed(0), output_type="pt").images
    ours = sd.img2img(img, PROMPTS, strength=strength, steps=10, sampler="ddim", generator=torch.Generator().manual_seed(0), progress=False)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_img2img_karras_starts_part_way(tiny):
    "A Karras img2img run is the last int(steps*strength) steps of the full grid from x0 + sigma * noise (PIL input accepted)."
    _, _, sd = tiny
    img = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(5))
    pil = to_pil(img)[0]
    img = torch.from_numpy(__import__("numpy").array(pil)).permute(2, 0, 1).float() / 255
    out = sd.img2img(pil, "the cat", strength=0.5, steps=8, sampler="euler", generator=torch.Generator().manual_seed(0), progress=False)
    g = torch.Generator().manual_seed(0)
    x0 = sd.encode(img[None], g)
    noise = torch.randn(x0.shape, generator=g)
    sig = sd._plan(8, "euler", True)[4:]
    x = sd._sample(sd._eps(["the cat"], [""], 7.5), x0 + noise * sig[0].item(), sig, "euler", None, False)
    torch.testing.assert_close(out, sd.decode(x))


def test_guidance_and_batch_consistency(tiny):
    "Each prompt of a batch gets its own image: a batch equals its prompts run alone with their latents."
    _, _, sd = tiny
    lat = latents()
    both = sd.generate(PROMPTS, steps=3, sampler="dpmpp_2m", latents=lat, progress=False)
    one = sd.generate(PROMPTS[1], steps=3, sampler="dpmpp_2m", latents=lat[1:], progress=False)
    torch.testing.assert_close(both[1:], one, atol=1e-5, rtol=0)
    assert (both[0] - both[1]).abs().max() > 1e-3


# ---- loading ----

def test_from_pretrained_reads_no_pickle_and_no_network(tiny, monkeypatch):
    _, folder, sd = tiny
    def refuse(*a, **k): raise AssertionError("tried to unpickle or to open a socket")
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    sd2 = StableDiffusion.from_pretrained(folder)
    out = sd2.generate("the cat", steps=2, latents=latents(1), progress=False)
    torch.testing.assert_close(out, sd.generate("the cat", steps=2, latents=latents(1), progress=False))


def test_transformers4_text_encoder_layout(tiny, tmp_path):
    "Checkpoints written by transformers 4 (e.g. SD v1.5's) prefix the text model with `text_model.` and keep position_ids."
    from safetensors.torch import load_file, save_file
    _, folder, sd = tiny
    f2 = tmp_path / "sd"
    shutil.copytree(folder, f2)
    w = load_file(str(f2 / "text_encoder" / "model.safetensors"))
    w = {"text_model." + k: v for k, v in w.items()}
    w["text_model.embeddings.position_ids"] = torch.arange(16)[None]
    save_file(w, str(f2 / "text_encoder" / "model.safetensors"), metadata={"format": "pt"})
    sd2 = StableDiffusion.from_pretrained(f2)
    ids = sd.tokenize(PROMPTS)
    with torch.no_grad(): torch.testing.assert_close(sd2.text_encoder(ids), sd.text_encoder(ids), atol=0, rtol=0)


def test_from_pretrained_errors(tiny, tmp_path):
    _, folder, _ = tiny
    def copy(name):
        d = tmp_path / name
        shutil.copytree(folder, d)
        return d
    with pytest.raises(FileNotFoundError, match="not a folder"): StableDiffusion.from_pretrained(tmp_path / "nowhere")
    d = copy("no_te"); shutil.rmtree(d / "text_encoder")
    with pytest.raises(FileNotFoundError, match="text_encoder/"): StableDiffusion.from_pretrained(d)
    d = copy("no_index"); (d / "model_index.json").unlink()
    with pytest.raises(FileNotFoundError, match="model_index.json"): StableDiffusion.from_pretrained(d)
    d = copy("bin_only"); (d / "unet" / "diffusion_pytorch_model.safetensors").rename(d / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError, match="pickled weights.*diffusion_pytorch_model.bin.*safe_serialization=True"): StableDiffusion.from_pretrained(d)
    d = copy("bin_te"); (d / "text_encoder" / "model.safetensors").rename(d / "text_encoder" / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickled weights"): StableDiffusion.from_pretrained(d)
    d = copy("bad_unet"); c = json.loads((d / "unet" / "config.json").read_text())
    (d / "unet" / "config.json").write_text(json.dumps({**c, "class_embed_type": "timestep", "num_class_embeds": 10}))
    with pytest.raises(ValueError, match="class_embed_type"): StableDiffusion.from_pretrained(d)
    d = copy("vpred"); c = json.loads((d / "scheduler" / "scheduler_config.json").read_text())
    (d / "scheduler" / "scheduler_config.json").write_text(json.dumps({**c, "prediction_type": "v_prediction"}))
    with pytest.raises(ValueError, match="v_prediction"): StableDiffusion.from_pretrained(d)
    d = copy("wrong_shape"); c = json.loads((d / "unet" / "config.json").read_text())
    (d / "unet" / "config.json").write_text(json.dumps({**c, "use_linear_projection": True}))
    with pytest.raises(ValueError, match="unet weights do not fit.*of another shape"): StableDiffusion.from_pretrained(d)
    d = copy("sdxl"); c = json.loads((d / "model_index.json").read_text())
    (d / "model_index.json").write_text(json.dumps({**c, "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}))
    with pytest.raises(ValueError, match="SDXL"): StableDiffusion.from_pretrained(d)
    with pytest.raises(TypeError, match="dtype"): StableDiffusion.from_pretrained(folder, dtype=torch.int8)


def test_from_pretrained_dtype(tiny):
    _, folder, sd = tiny
    half = StableDiffusion.from_pretrained(folder, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and next(half.text_encoder.parameters()).dtype == torch.bfloat16
    assert next(half.vae.parameters()).dtype == torch.bfloat16
    out = half.generate(PROMPTS, steps=3, latents=latents(), progress=False)
    assert out.dtype == torch.float32
    assert (out - sd.generate(PROMPTS, steps=3, latents=latents(), progress=False)).abs().max() < 0.1
    assert next(StableDiffusion.from_pretrained(folder, dtype="float16").vae.parameters()).dtype == torch.float32   # force_upcast, as diffusers


def test_save_pretrained_roundtrip(tiny, tmp_path):
    "Our folder loads back into ours and into diffusers, with the same images."
    pipe, _, sd = tiny
    out = sd.save_pretrained(tmp_path / "ours")
    back = StableDiffusion.from_pretrained(out)
    lat = latents()
    mine = sd.generate(PROMPTS, steps=3, sampler="ddim", latents=lat, progress=False)
    torch.testing.assert_close(back.generate(PROMPTS, steps=3, sampler="ddim", latents=lat, progress=False), mine, atol=0, rtol=0)
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(out, safety_checker=None)
    theirs = ddim_ref(theirs)
    theirs.set_progress_bar_config(disable=True)
    torch.testing.assert_close(theirs(PROMPTS, num_inference_steps=3, latents=lat, output_type="pt").images, mine, atol=1e-4, rtol=0)


# ---- bad input: clear errors before any work ----

def test_bad_input_fails_before_any_model_call(tiny):
    _, _, sd = tiny
    calls = []
    hooks = [m.register_forward_pre_hook(lambda *a: calls.append(1)) for m in (sd.unet, sd.text_encoder, sd.vae.encoder, sd.vae.decoder)]
    img = torch.rand(1, 3, 16, 16)
    try:
        cases = [
            (lambda: sd.generate([]), ValueError, "empty"),
            (lambda: sd.generate(["a", 3]), TypeError, "str"),
            (lambda: sd.generate(None), TypeError, "prompt"),
            (lambda: sd.generate("a", height=20), ValueError, "height must be a positive multiple of 8"),
            (lambda: sd.generate("a", width=0), ValueError, "width"),
            (lambda: sd.generate("a", sampler="plms"), ValueError, "sampler must be one of"),
            (lambda: sd.generate("a", steps=0), ValueError, "steps"),
            (lambda: sd.generate("a", steps=1001, sampler="ddim"), ValueError, "steps"),
            (lambda: sd.generate("a", guidance_scale=float("nan")), TypeError, "guidance_scale"),
            (lambda: sd.generate(PROMPTS, negative_prompt=["x", "y", "z"]), ValueError, "negative_prompt"),
            (lambda: sd.generate(PROMPTS, latents=latents(1)), ValueError, "latents"),
            (lambda: sd.generate("a", latents=latents(1), height=32), ValueError, "latents"),
            (lambda: sd.generate("a", latents=torch.zeros(1, 4, 8, 8, dtype=torch.long)), TypeError, "latents"),
            (lambda: sd.generate("a", generator=0), TypeError, "generator"),
            (lambda: sd.img2img(img, "a", strength=0.), ValueError, "strength"),
            (lambda: sd.img2img(img, "a", strength=1.5), ValueError, "strength"),
            (lambda: sd.img2img(img, "a", strength=0.05, steps=10), ValueError, "runs no step"),
            (lambda: sd.img2img(img * 2 - 1, "a"), ValueError, r"\[0, 1\]"),
            (lambda: sd.img2img(torch.rand(1, 3, 12, 16), "a"), ValueError, "height"),
            (lambda: sd.img2img(torch.rand(3, 3, 16, 16), PROMPTS), ValueError, "one per prompt"),
            (lambda: sd.img2img("image.png", "a"), TypeError, "image"),
        ]
        for f, err, msg in cases:
            with pytest.raises(err, match=msg): f()
    finally:
        for h in hooks: h.remove()
    assert not calls, "a model ran before the input was refused"


def test_to_pil():
    x = torch.rand(2, 3, 5, 7)
    ims = to_pil(x)
    assert len(ims) == 2 and ims[0].size == (7, 5) and ims[0].mode == "RGB"
    import numpy as np
    np.testing.assert_array_equal(np.asarray(ims[1]), (x[1].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
    with pytest.raises(ValueError, match="B, 3, H, W"): to_pil(torch.rand(2, 5, 4, 4))
