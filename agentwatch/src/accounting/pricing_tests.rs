use super::*;

fn usage(input: u64, output: u64, cache_read: u64, cache_write: u64) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        cache_read_tokens: cache_read,
        cache_write_tokens: cache_write,
        ..Usage::default()
    }
}

fn close(a: Option<f64>, b: f64) {
    let a = a.expect("a price");
    assert!((a - b).abs() < 1e-12, "{a} != {b}");
}

fn base(p: &Pricing, m: &str) -> Option<(f64, f64, f64, f64)> {
    p.rates(m).map(|r| {
        (
            r.base.input_per_mtok,
            r.base.output_per_mtok,
            r.base.cache_read_per_mtok,
            r.base.cache_write_per_mtok,
        )
    })
}

#[test]
fn pricing_builtin_parses_and_has_current_models() {
    let p = Pricing::builtin().unwrap();
    let expect = [
        ("gpt-4o", 2.50, 10.0, 1.25, 2.50),
        ("gpt-4o-mini", 0.15, 0.60, 0.075, 0.15),
        ("gpt-4.1", 2.0, 8.0, 0.50, 2.0),
        ("o3", 2.0, 8.0, 0.50, 2.0),
        ("gpt-5", 1.25, 10.0, 0.125, 1.25),
        ("gpt-5-mini", 0.25, 2.0, 0.025, 0.25),
        ("gpt-5-pro", 15.0, 120.0, 15.0, 15.0),
        ("gpt-5.2", 1.75, 14.0, 0.175, 1.75),
        ("claude-opus-4-6", 5.0, 25.0, 0.50, 6.25),
        ("claude-opus-4-5", 5.0, 25.0, 0.50, 6.25),
        ("claude-opus-4-1", 15.0, 75.0, 1.50, 18.75),
        ("claude-sonnet-4-5", 3.0, 15.0, 0.30, 3.75),
        ("claude-haiku-4-5", 1.0, 5.0, 0.10, 1.25),
        ("gemini-2.5-pro", 1.25, 10.0, 0.125, 1.25),
    ];
    for (model, i, o, cr, cw) in expect {
        assert_eq!(base(&p, model), Some((i, o, cr, cw)), "{model}");
    }
    assert!(p.info().builtin_models >= 60, "{:?}", p.info());
}

#[test]
fn pricing_names_exact_then_normalised_then_snapshot() {
    let p = Pricing::builtin().unwrap();
    let r = |m: &str| p.entry(m).map(|(name, _)| name);
    // Dated snapshots without entries of their own.
    assert_eq!(r("gpt-4o-mini-2024-07-18").as_deref(), Some("gpt-4o-mini"));
    assert_eq!(r("gpt-4o-2024-08-06").as_deref(), Some("gpt-4o"));
    assert_eq!(
        r("claude-sonnet-4-5-20250929").as_deref(),
        Some("claude-sonnet-4-5")
    );
    assert_eq!(r("o3-2025-04-16").as_deref(), Some("o3"));
    assert_eq!(r("gpt-4-0613").as_deref(), Some("gpt-4"));
    assert_eq!(
        r("claude-sonnet-latest"),
        None,
        "an alias is not a snapshot"
    );
    // Variants are not their family: each has its own entry, or none.
    assert_eq!(r("gpt-5-pro").as_deref(), Some("gpt-5-pro"));
    assert_eq!(r("gpt-5.2").as_deref(), Some("gpt-5.2"));
    assert_eq!(r("claude-opus-4-6").as_deref(), Some("claude-opus-4-6"));
    assert_eq!(r("gpt-5.9-ultra"), None);
    assert_eq!(r("gpt-5-turbo-max"), None);
    // Routed names.
    assert_eq!(
        r("anthropic/claude-opus-4.5").as_deref(),
        Some("claude-opus-4-5"),
        "OpenRouter"
    );
    assert_eq!(
        r("anthropic.claude-sonnet-4-5-20250929-v1:0").as_deref(),
        Some("claude-sonnet-4-5"),
        "Bedrock"
    );
    assert_eq!(
        r("us.anthropic.claude-opus-4-1-20250805-v1:0").as_deref(),
        Some("claude-opus-4-1"),
        "Bedrock cross-region profile"
    );
    assert_eq!(
        r("claude-opus-4-5@20251101").as_deref(),
        Some("claude-opus-4-5"),
        "Vertex"
    );
    assert_eq!(
        r("publishers/google/models/gemini-2.5-pro").as_deref(),
        Some("gemini-2.5-pro")
    );
    assert_eq!(r("openai/gpt-4o-mini").as_deref(), Some("gpt-4o-mini"));
    assert_eq!(r("GPT-4o-Mini").as_deref(), Some("gpt-4o-mini"));
    // A dot inside a version is kept outside Claude's names.
    assert_eq!(r("gpt-4.1-mini").as_deref(), Some("gpt-4.1-mini"));
}

#[test]
fn pricing_cost_formula_with_1h_writes_and_tiers() {
    let p = Pricing::builtin().unwrap();
    // gpt-4o-mini: 1200 input of which 1024 cached, 300 output.
    close(
        p.cost_usd("gpt-4o-mini", &usage(1200, 300, 1024, 0)),
        (176.0 * 0.15 + 1024.0 * 0.075 + 300.0 * 0.60) / 1e6,
    );
    // claude-sonnet-4-5: 5025 input = 25 + 1000 write (400 of them 1-hour) + 4000 read.
    let mut u = usage(5025, 87, 4000, 1000);
    u.cache_write_1h_tokens = 400;
    close(
        p.cost_usd("claude-sonnet-4-5-20250929", &u),
        (25.0 * 3.0 + 4000.0 * 0.30 + 600.0 * 3.75 + 400.0 * 6.0 + 87.0 * 15.0) / 1e6,
    );
    // Above 200k input tokens every token takes the long-context rates.
    let mut big = usage(250_000, 1_000, 100_000, 10_000);
    big.cache_write_1h_tokens = 10_000;
    close(
        p.cost_usd("claude-sonnet-4-5", &big),
        (140_000.0 * 6.0 + 100_000.0 * 0.6 + 10_000.0 * 12.0 + 1_000.0 * 22.5) / 1e6,
    );
    close(
        p.cost_usd("claude-sonnet-4-5", &usage(200_000, 0, 0, 0)),
        0.6,
    );
    close(
        p.cost_usd("gpt-5", &usage(1_000_000, 1_000_000, 0, 0)),
        11.25,
    );
}

#[test]
fn pricing_exact_beats_prefix_and_cache_fallback() {
    let p = Pricing::from_toml(
        r#"
        [[model]]
        name = "m*"
        input_per_mtok = 1.0
        output_per_mtok = 2.0
        [[model]]
        name = "m-1"
        input_per_mtok = 10.0
        output_per_mtok = 20.0
        cache_write_per_mtok = 12.5
        "#,
    )
    .unwrap();
    assert_eq!(p.rates("m-1").unwrap().base.input_per_mtok, 10.0);
    assert_eq!(p.rates("m-10").unwrap().base.input_per_mtok, 1.0);
    // Missing cache-read rate → the input rate; missing 1-hour rate → the write rate.
    let r = p.rates("m-1").unwrap().base;
    assert_eq!(
        (
            r.cache_read_per_mtok,
            r.cache_write_per_mtok,
            r.cache_write_1h_per_mtok
        ),
        (10.0, 12.5, 12.5)
    );
    close(
        p.cost_usd("m-1", &usage(100, 10, 50, 20)),
        (30.0 * 10.0 + 50.0 * 10.0 + 20.0 * 12.5 + 10.0 * 20.0) / 1e6,
    );
    // An override's prefix does not beat an exact name of the built-in table.
    let p = Pricing::builtin()
        .unwrap()
        .with_overrides(vec![PriceOverride {
            model: "gpt-5*".into(),
            input_per_mtok: 99.0,
            output_per_mtok: 99.0,
            ..PriceOverride::default()
        }])
        .unwrap();
    assert_eq!(p.rates("gpt-5-mini").unwrap().base.input_per_mtok, 0.25);
    assert_eq!(p.rates("gpt-5-someday").unwrap().base.input_per_mtok, 99.0);
}

#[test]
fn pricing_overrides_win_and_parse_from_config() {
    #[derive(Deserialize)]
    struct Config {
        pricing: Vec<PriceOverride>,
    }
    let cfg: Config = toml::from_str(
        r#"
        [[pricing]]
        model = "gpt-4o-mini"
        input_per_mtok = 1.0
        output_per_mtok = 4.0
        cache_read_per_mtok = 0.5
        [[pricing]]
        model = "my-local-*"
        input_per_mtok = 0
        output_per_mtok = 0
        "#,
    )
    .unwrap();
    let p = Pricing::builtin()
        .unwrap()
        .with_overrides(cfg.pricing)
        .unwrap();
    assert_eq!(base(&p, "gpt-4o-mini"), Some((1.0, 4.0, 0.5, 1.0)));
    // The override covers dated snapshots too (looked up without the suffix).
    assert_eq!(
        p.rates("gpt-4o-mini-2024-07-18")
            .unwrap()
            .base
            .input_per_mtok,
        1.0
    );
    close(p.cost_usd("my-local-llama", &usage(1000, 1000, 0, 0)), 0.0);

    let bad: Result<Config, _> = toml::from_str(
        "[[pricing]]\nmodel = \"x\"\ninput_per_mtok = 1.0\noutput_per_mtok = 1.0\ncolor = 1\n",
    );
    assert!(bad.is_err(), "unknown fields are refused");
    let negative = PriceOverride {
        model: "x".into(),
        input_per_mtok: -1.0,
        output_per_mtok: 1.0,
        ..PriceOverride::default()
    };
    assert_eq!(
        Pricing::builtin()
            .unwrap()
            .with_overrides(vec![negative])
            .err(),
        Some(PricingError::InvalidRate {
            model: "x".into(),
            field: "input_per_mtok"
        })
    );
}

#[test]
fn pricing_unpriced_counts_at_the_highest_rates_by_default() {
    let p = Pricing::builtin().unwrap();
    let (hi_in, hi_out) = p.highest_per_mtok();
    assert!(hi_in >= 15.0 && hi_out >= 120.0, "{hi_in} {hi_out}");
    let priced = p.price(Some("mystery-model"), &usage(1000, 100, 0, 0));
    assert_eq!(priced.cost_usd, None);
    assert_eq!(priced.priced_as, None);
    close(
        priced.unpriced_charge_usd,
        (1000.0 * hi_in + 100.0 * hi_out) / 1e6,
    );
    p.price(Some("mystery-model"), &usage(10, 10, 0, 0));
    assert_eq!(p.unknown_models(), vec!["mystery-model".to_string()]);
    let zero = Pricing::builtin().unwrap().with_unpriced(Unpriced::Zero);
    assert_eq!(
        zero.price(Some("mystery-model"), &usage(10, 10, 0, 0))
            .unpriced_charge_usd,
        None
    );
    // The response's model prices the call when the request's (an Azure deployment) does not.
    let priced = p.price_call(
        &[Some("gpt-4o-2024-08-06"), Some("my-deployment")],
        &usage(1_000_000, 0, 0, 0),
    );
    assert_eq!(priced.priced_as.as_deref(), Some("gpt-4o"));
    close(priced.cost_usd, 2.5);
    assert!(matches!(
        Pricing::from_toml("[[model]]\nname = \"a\"\n"),
        Err(PricingError::Parse { .. })
    ));
    assert!(matches!(
        Pricing::from_toml(
            "[[model]]\nname=\"a\"\ninput_per_mtok=1.0\noutput_per_mtok=1.0\n[[model]]\nname=\"A\"\ninput_per_mtok=1.0\noutput_per_mtok=1.0\n"
        ),
        Err(PricingError::Duplicate { .. })
    ));
}

#[test]
fn pricing_litellm_file_prices_exactly_with_its_tiers() {
    let dir = std::env::temp_dir().join(format!("aw-litellm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model_prices_and_context_window.json");
    std::fs::write(
        &path,
        r#"{
          "sample_spec": {"input_cost_per_token": 0, "output_cost_per_token": 0, "mode": "chat"},
          "house-model-2": {
            "litellm_provider": "house", "mode": "chat",
            "input_cost_per_token": 2e-06, "output_cost_per_token": 8e-06,
            "cache_read_input_token_cost": 2e-07,
            "cache_creation_input_token_cost": 2.5e-06,
            "cache_creation_input_token_cost_above_1hr": 4e-06,
            "input_cost_per_token_above_200k_tokens": 4e-06,
            "output_cost_per_token_above_200k_tokens": 1.2e-05,
            "cache_read_input_token_cost_above_200k_tokens": 4e-07,
            "input_cost_per_token_above_200k_tokens_batches": 1e-06
          },
          "openrouter/vendor/routed-model": {
            "litellm_provider": "openrouter", "mode": "chat",
            "input_cost_per_token": 1e-06, "output_cost_per_token": 1e-06
          },
          "gpt-4o-mini": {"litellm_provider": "openai", "mode": "chat",
            "input_cost_per_token": 3e-07, "output_cost_per_token": 1e-06},
          "dall-e-3": {"litellm_provider": "openai", "mode": "image_generation",
            "input_cost_per_pixel": 1e-08, "output_cost_per_token": 0},
          "tts-1": {"litellm_provider": "openai", "mode": "audio_speech",
            "input_cost_per_token": 1.5e-05}
        }"#,
    )
    .unwrap();
    let p = Pricing::builtin()
        .unwrap()
        .with_litellm_file(&path)
        .unwrap();
    let info = p.info();
    assert_eq!((info.file_models, info.file_entries_skipped), (4, 3));
    // Below the tier: base rates; 1-hour cache writes at their own rate.
    let mut u = usage(1_000, 100, 200, 300);
    u.cache_write_1h_tokens = 100;
    close(
        p.cost_usd("house-model-2", &u),
        (500.0 * 2.0 + 200.0 * 0.2 + 200.0 * 2.5 + 100.0 * 4.0 + 100.0 * 8.0) / 1e6,
    );
    // Above 200k: every token at the tier's rates (cache writes: the base rate, none given).
    let u = usage(300_000, 1_000, 100_000, 0);
    close(
        p.cost_usd("house-model-2", &u),
        (200_000.0 * 4.0 + 100_000.0 * 0.4 + 1_000.0 * 12.0) / 1e6,
    );
    // The file wins over the built-in table; a routed key is found by its routed name.
    assert_eq!(p.rates("gpt-4o-mini").unwrap().base.input_per_mtok, 0.3);
    assert_eq!(
        p.entry("vendor/routed-model").map(|(n, _)| n).as_deref(),
        Some("vendor/routed-model")
    );
    assert!(matches!(
        Pricing::builtin()
            .unwrap()
            .with_litellm_file(&dir.join("absent.json")),
        Err(PricingError::File { .. })
    ));
    std::fs::remove_dir_all(&dir).ok();
}

/// Every built-in entry agrees with LiteLLM's published price file, when the test setup has
/// fetched it (`cargo xtask test` does: `LITELLM_PRICES`).
#[test]
fn pricing_builtin_agrees_with_litellm() {
    let Some(path) = std::env::var_os("LITELLM_PRICES") else {
        eprintln!("LITELLM_PRICES not set: nothing to compare (cargo xtask test sets it)");
        return;
    };
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("LITELLM_PRICES")).unwrap();
    let builtin: PricingFile = toml::from_str(BUILTIN_TOML).unwrap();
    // Where LiteLLM files a model: under its own name, or the key a `# LiteLLM:` comment
    // under the entry's name gives (Bedrock's, a provider-routed one).
    let mut cited = HashMap::new();
    let mut last = None;
    for line in BUILTIN_TOML.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            last = Some(n.trim_matches('"').to_string());
        } else if let (Some(k), Some(n)) = (line.strip_prefix("# LiteLLM: "), &last) {
            cited.insert(n.clone(), k.trim().to_string());
        }
    }
    let mut compared = 0;
    for e in &builtin.model {
        let n = &e.model;
        let key = cited.get(n).unwrap_or(n);
        let Some(v) = file.get(key) else {
            assert!(!cited.contains_key(n), "{n}: LiteLLM has no {key}");
            continue;
        };
        let per_mtok = |k: &str| v.get(k).and_then(|x| x.as_f64()).map(|x| x * 1e6);
        let near = |a: f64, b: Option<f64>, what: &str| {
            if let Some(b) = b {
                assert!((a - b).abs() < 1e-6, "{n} {what}: ours {a}, LiteLLM {b}");
            }
        };
        let r = e.rates().unwrap();
        near(
            r.base.input_per_mtok,
            per_mtok("input_cost_per_token"),
            "input",
        );
        near(
            r.base.output_per_mtok,
            per_mtok("output_cost_per_token"),
            "output",
        );
        near(
            r.base.cache_read_per_mtok,
            per_mtok("cache_read_input_token_cost"),
            "cache read",
        );
        near(
            r.base.cache_write_per_mtok,
            per_mtok("cache_creation_input_token_cost"),
            "cache write",
        );
        near(
            r.base.cache_write_1h_per_mtok,
            per_mtok("cache_creation_input_token_cost_above_1hr"),
            "1-hour cache write",
        );
        compared += 1;
    }
    assert!(compared >= 60, "compared {compared} entries");
}
