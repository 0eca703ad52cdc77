//! txt, csv and json imports of every kind, from files written here.

use datasets::{
    DataKey, Dns, ImportError, ImportOptions, Os, Password, ProxyScheme, ProxySwitching, RowError,
    Rows, Span, TrafficType, decode, encode, parse,
};
use domain::{DatasetKind, ImportFormat, RowsSummary};
use secrecy::ExposeSecret;

fn import(kind: DatasetKind, format: ImportFormat, text: &str) -> Result<Rows, ImportError> {
    parse(kind, format, text.as_bytes(), &ImportOptions::default())
}

fn row_errors(result: Result<Rows, ImportError>) -> Vec<RowError> {
    match result {
        Err(ImportError::Rows { errors, total }) => {
            assert_eq!(errors.len(), total);
            errors
        }
        other => panic!("expected row errors, got {other:?}"),
    }
}

fn at(line: u64, column: &str) -> (u64, Option<String>) {
    (line, Some(column.to_owned()))
}

fn places(errors: &[RowError]) -> Vec<(u64, Option<String>)> {
    errors.iter().map(|e| (e.line, e.column.clone())).collect()
}

#[test]
fn a_targets_txt_is_one_url_per_line_with_comments_and_blanks_skipped() {
    let text = "# my sites\nhttps://example.com/\n\n  http://shop.example.com/cart?x=1  \n# done\n";
    let Rows::Targets(targets) = import(DatasetKind::Targets, ImportFormat::Txt, text).unwrap()
    else {
        panic!("targets expected")
    };
    assert_eq!(targets.len(), 2);
    assert_eq!(targets[1].url.as_str(), "http://shop.example.com/cart?x=1");
    assert_eq!(targets[0].traffic_type, TrafficType::Direct);
    assert_eq!((targets[0].flow_target, targets[0].click_target), (1, 0));
}

#[test]
fn a_bad_txt_line_is_reported_at_its_line() {
    let text = "https://example.com/\nftp://example.com/\nnot a url\n";
    let errors = row_errors(import(DatasetKind::Targets, ImportFormat::Txt, text));
    assert_eq!(places(&errors), [at(2, "url"), at(3, "url")]);
    assert!(
        errors[0].reason.contains("not an http or https URL"),
        "{}",
        errors[0].reason
    );
}

#[test]
fn a_targets_csv_reads_any_column_order_and_header_spelling() {
    let csv = "Flow Target,URL,trafficType,Source,keyword,click_target\n\
               10,https://example.com/a,organic,google,\"blue shoes, cheap\",3\n\
               5,https://example.com/b,referral,news.example.org,,0\n\
               ,https://example.com/c,,,,\n";
    let Rows::Targets(t) = import(DatasetKind::Targets, ImportFormat::Csv, csv).unwrap() else {
        panic!()
    };
    assert_eq!(t.len(), 3);
    assert_eq!(t[0].traffic_type, TrafficType::Organic);
    assert_eq!(t[0].keyword.as_deref(), Some("blue shoes, cheap"));
    assert_eq!((t[0].flow_target, t[0].click_target), (10, 3));
    assert_eq!(t[1].source.as_deref(), Some("https://news.example.org/"));
    assert_eq!(
        (t[2].traffic_type, t[2].flow_target),
        (TrafficType::Direct, 1)
    );
}

#[test]
fn every_bad_row_of_a_csv_is_reported_with_its_line_and_column() {
    // Line 3 holds a quoted field over two lines, so the rows after it sit a line lower.
    let csv = "url,traffic_type,source,keyword,flow_target,click_target\n\
               https://example.com/,direct,,,1,0\n\
               https://example.com/ok,organic,google,\"two\nlines\",2,1\n\
               gopher://example.com/,direct,,,1,0\n\
               https://example.com/,sideways,,,1,0\n\
               https://example.com/,referral,,,1,0\n\
               https://example.com/,direct,,,0,0\n\
               https://example.com/,direct,,,2,5\n\
               https://example.com/,organic,bing,,1,0\n";
    let errors = row_errors(import(DatasetKind::Targets, ImportFormat::Csv, csv));
    assert_eq!(
        places(&errors),
        [
            at(5, "url"),
            at(6, "traffic_type"),
            at(7, "source"),
            at(8, "flow_target"),
            at(9, "click_target"),
            at(10, "keyword"),
        ]
    );
    assert!(
        errors[1]
            .reason
            .contains("\"sideways\" is not a traffic type"),
        "{}",
        errors[1].reason
    );
}

#[test]
fn unknown_and_missing_columns_are_named() {
    let csv = "link,colour,weight\nhttps://example.com/,red,3\n";
    let errors = row_errors(import(DatasetKind::Targets, ImportFormat::Csv, csv));
    assert_eq!(places(&errors), [at(1, "colour"), at(1, "weight")]);
    assert!(
        errors[0].reason.contains("url, traffic_type"),
        "{}",
        errors[0].reason
    );

    let errors = row_errors(import(
        DatasetKind::Proxies,
        ImportFormat::Csv,
        "host\n1.2.3.4\n",
    ));
    assert_eq!(places(&errors), [at(1, "port")]);
    assert_eq!(errors[0].reason, "required column is missing");
}

#[test]
fn a_semicolon_csv_with_a_bom_reads_too() {
    let csv = "\u{feff}url;flow_target\nhttps://example.com/;4\n";
    let Rows::Targets(t) = import(DatasetKind::Targets, ImportFormat::Csv, csv).unwrap() else {
        panic!()
    };
    assert_eq!(t[0].flow_target, 4);
}

#[test]
fn a_file_with_no_rows_is_empty() {
    assert_eq!(
        import(DatasetKind::Targets, ImportFormat::Txt, "# nothing\n\n"),
        Err(ImportError::Empty)
    );
    assert_eq!(
        import(DatasetKind::Targets, ImportFormat::Csv, "url\n"),
        Err(ImportError::Empty)
    );
    assert_eq!(
        import(DatasetKind::Targets, ImportFormat::Json, "[]"),
        Err(ImportError::Empty)
    );
}

#[test]
fn text_that_is_not_text_is_not_that_format() {
    let latin1 = b"url\nhttps://example.com/caf\xe9\n";
    let result = parse(
        DatasetKind::Targets,
        ImportFormat::Csv,
        latin1,
        &ImportOptions::default(),
    );
    assert!(matches!(
        result,
        Err(ImportError::NotThatFormat {
            format: ImportFormat::Csv,
            ..
        })
    ));
    let zip = b"PK\x03\x04rest of an archive";
    let result = parse(
        DatasetKind::Targets,
        ImportFormat::Txt,
        zip,
        &ImportOptions::default(),
    );
    assert!(matches!(&result, Err(ImportError::NotThatFormat { why, .. }) if why.contains("zip")));
    let result = import(DatasetKind::DeviceProfiles, ImportFormat::Txt, "anything");
    assert!(matches!(
        result,
        Err(ImportError::NotThatFormat {
            format: ImportFormat::Txt,
            ..
        })
    ));
}

#[test]
fn a_proxies_txt_takes_urls_host_port_and_host_port_user_password() {
    let text = "socks5://alice:s3cr%40t@proxy.example.com:1080 eu-west\n\
                10.0.0.1:8080\n\
                https://[2001:db8::1]:443\n\
                proxy2.example.com:3128:bob:pa55 US\n";
    let Rows::Proxies(p) = import(DatasetKind::Proxies, ImportFormat::Txt, text).unwrap() else {
        panic!()
    };
    assert_eq!(p.len(), 4);
    assert_eq!(
        (p[0].scheme, p[0].host.as_str(), p[0].port),
        (ProxyScheme::Socks5, "proxy.example.com", 1080)
    );
    assert_eq!(p[0].username.as_deref(), Some("alice"));
    let Some(Password::Clear(secret)) = &p[0].password else {
        panic!()
    };
    assert_eq!(secret.expose_secret(), "s3cr@t");
    assert_eq!(p[0].region.as_deref(), Some("eu-west"));
    assert_eq!(
        (p[1].scheme, p[1].port, p[1].username.as_ref()),
        (ProxyScheme::Http, 8080, None)
    );
    assert_eq!(p[2].host, "2001:db8::1");
    assert_eq!(
        (p[3].username.as_deref(), p[3].region.as_deref()),
        (Some("bob"), Some("US"))
    );
}

#[test]
fn a_bad_proxy_line_never_quotes_its_password() {
    let text = "http://carol:TopSecret99@proxy.example.com:99999\n\
                ftp://dave:TopSecret99@proxy.example.com:1\n\
                proxy.example.com:0:eve:TopSecret99\n";
    let errors = row_errors(import(DatasetKind::Proxies, ImportFormat::Txt, text));
    assert_eq!(
        places(&errors),
        [at(1, "port"), at(2, "scheme"), at(3, "port")]
    );
    for e in &errors {
        assert!(!e.to_string().contains("TopSecret99"), "{e}");
    }
}

#[test]
fn proxies_from_csv_and_json() {
    let csv = "Protocol,IP,Port,User,Pass,Country\nsocks5,198.51.100.7,1080,u,p,DE\nhttp,proxy.example.com,8080,,,\n";
    let Rows::Proxies(p) = import(DatasetKind::Proxies, ImportFormat::Csv, csv).unwrap() else {
        panic!()
    };
    assert_eq!(
        (p[0].host.as_str(), p[0].region.as_deref()),
        ("198.51.100.7", Some("DE"))
    );
    assert!(p[1].password.is_none());

    let json = r#"[{"scheme":"https","host":"Proxy.Example.COM","port":"443"},{"host":"x.example","port":70000,"password":"pw"}]"#;
    let errors = row_errors(import(DatasetKind::Proxies, ImportFormat::Json, json));
    // A row's cross-field rules wait until its fields are valid, so a fix shows no new surprise.
    assert_eq!(places(&errors), [at(2, "port")]);
    let fixed = json.replace("70000", "7000");
    assert_eq!(
        places(&row_errors(import(
            DatasetKind::Proxies,
            ImportFormat::Json,
            &fixed
        ))),
        [at(2, "username")]
    );
}

#[test]
fn device_profiles_from_csv_with_every_field_checked() {
    let csv = "name,os,browser,user_agent,width,height,dpr,touch,locale,timezone\n\
               Pixel,Android,Chrome,Mozilla/5.0 (Linux; Android 14),412,915,2.625,yes,en-US,America/New_York\n\
               Huge,Windows,Chrome,Mozilla/5.0,100000,900,9,maybe,english!,Mars/Base\n";
    let errors = row_errors(import(DatasetKind::DeviceProfiles, ImportFormat::Csv, csv));
    assert_eq!(
        places(&errors),
        [
            at(3, "width"),
            at(3, "dpr"),
            at(3, "touch"),
            at(3, "locale"),
            at(3, "timezone")
        ]
    );
    let good = csv.lines().take(2).collect::<Vec<_>>().join("\n");
    let Rows::DeviceProfiles(d) =
        import(DatasetKind::DeviceProfiles, ImportFormat::Csv, &good).unwrap()
    else {
        panic!()
    };
    assert_eq!(
        (
            d[0].os,
            d[0].viewport.width,
            d[0].device_scale_factor,
            d[0].touch
        ),
        (Os::Android, 412, 2.625, true)
    );
}

#[test]
fn settings_profiles_from_flat_csv_columns() {
    let csv = "name,session_min,session_max,pages,delay,scrolling,clicks,external_share,click_timing,instances,proxy_policy,dns_hosts,marker_header\n\
               Busy,30,90,2..5,10,on,on,25%,300-900,8,sticky_session,example.com=127.0.0.1; ::1 www.example.com,\n\
               Calm,45,,,,,,,,,,,no\n";
    let errors = row_errors(import(
        DatasetKind::SettingsProfiles,
        ImportFormat::Csv,
        csv,
    ));
    assert_eq!(places(&errors), [at(3, "session_max")]);
    let good = csv.lines().take(2).collect::<Vec<_>>().join("\n");
    let rows = import(DatasetKind::SettingsProfiles, ImportFormat::Csv, &good).unwrap();
    assert_eq!(
        rows.summary(),
        RowsSummary {
            rows: 1,
            max_instances: 8,
            human_surfing: true,
            external_clicks: true
        }
    );
    let Rows::SettingsProfiles(s) = rows else {
        panic!()
    };
    let s = &s[0];
    assert_eq!(s.session_duration, Span { min: 30, max: 90 });
    assert_eq!(s.pages_per_session, Span { min: 2, max: 5 });
    assert_eq!(s.delay_between_flows, Span::constant(10));
    assert_eq!(s.human_surfing.external_click_share, 0.25);
    assert_eq!(s.human_surfing.click_delay_ms, Span { min: 300, max: 900 });
    assert_eq!(s.proxy_switching, ProxySwitching::StickySession);
    let Dns::Custom { hosts } = &s.dns else {
        panic!()
    };
    assert_eq!(hosts.len(), 2);
    assert!(s.marker_header);
}

#[test]
fn settings_profiles_from_nested_json_with_defaults() {
    let json = r#"[
        {"name": "Quiet"},
        {"name": "Nested", "session_duration": {"min": 20, "max": 40},
         "human_surfing": {"random_scrolling": true, "clicks": false},
         "dns": {"mode": "custom", "hosts": {"example.com": "192.0.2.1"}}, "marker_header": false},
        {"name": "Bad", "instances": 0, "human_surfing": {"external_click_share": 2}, "colour": "red", "pages_per_session": [1, 2]}
    ]"#;
    let errors = row_errors(import(
        DatasetKind::SettingsProfiles,
        ImportFormat::Json,
        json,
    ));
    assert_eq!(places(&errors), [at(3, "colour")]);
    let fixed = json.replace(", \"colour\": \"red\"", "");
    let errors = row_errors(import(
        DatasetKind::SettingsProfiles,
        ImportFormat::Json,
        &fixed,
    ));
    assert_eq!(
        places(&errors),
        [
            at(3, "pages_per_session"),
            at(3, "human_surfing.external_click_share"),
            at(3, "instances")
        ]
    );
    let good = r#"[{"name": "Quiet"}, {"name": "Nested", "session_duration": {"min": 20, "max": 40},
        "human_surfing": {"random_scrolling": true, "clicks": false},
        "dns": {"mode": "custom", "hosts": {"example.com": "192.0.2.1"}}, "marker_header": false}]"#;
    let rows = import(DatasetKind::SettingsProfiles, ImportFormat::Json, good).unwrap();
    assert_eq!(
        rows.summary(),
        RowsSummary {
            rows: 2,
            max_instances: 1,
            human_surfing: true,
            external_clicks: false
        }
    );
    let Rows::SettingsProfiles(s) = rows else {
        panic!()
    };
    assert_eq!(
        (s[0].session_duration, s[0].instances, s[0].marker_header),
        (Span::constant(60), 1, true)
    );
    assert_eq!(s[1].session_duration, Span { min: 20, max: 40 });
    assert!(!s[1].marker_header);
}

#[test]
fn json_that_is_not_an_array_of_objects() {
    for text in ["{\"url\": \"https://example.com/\"}", "[1, 2", "not json"] {
        assert!(
            matches!(
                import(DatasetKind::Targets, ImportFormat::Json, text),
                Err(ImportError::NotThatFormat { .. })
            ),
            "{text}"
        );
    }
    let errors = row_errors(import(
        DatasetKind::Targets,
        ImportFormat::Json,
        r#"[{"url": "https://example.com/"}, "https://example.com/"]"#,
    ));
    assert_eq!(places(&errors), [(2, None)]);
}

#[test]
fn rows_read_back_from_their_canonical_bytes() {
    let csv = "url,traffic_type,source,keyword,flow_target,click_target\n\
               https://example.com/,organic,google,shoes,10,2\nhttps://example.org/x,direct,,,1,0\n";
    let rows = import(DatasetKind::Targets, ImportFormat::Csv, csv).unwrap();
    let bytes = encode(&rows).unwrap();
    assert_eq!(decode(&bytes).unwrap(), rows);
    assert_eq!(
        encode(&decode(&bytes).unwrap()).unwrap(),
        bytes,
        "encoding is deterministic"
    );
    assert!(decode(b"{\"dataset\":2,\"kind\":\"Targets\",\"rows\":0}\n").is_err());
    assert!(decode(&bytes[..bytes.len() - 10]).is_err());
    assert!(decode(b"").is_err());
}

#[test]
fn proxy_passwords_are_sealed_before_they_are_stored() {
    let text = "http://alice:Hunter2Hunter2@proxy.example.com:8080\nproxy.example.com:3128\n";
    let mut rows = import(DatasetKind::Proxies, ImportFormat::Txt, text).unwrap();
    assert!(
        encode(&rows).is_err(),
        "a password in clear is never encoded"
    );
    assert!(!format!("{rows:?}").contains("Hunter2"));
    let key = DataKey::generate().unwrap();
    rows.seal_credentials(&key).unwrap();
    let bytes = encode(&rows).unwrap();
    assert!(!String::from_utf8_lossy(&bytes).contains("Hunter2"));
    let Rows::Proxies(back) = decode(&bytes).unwrap() else {
        panic!()
    };
    let Some(Password::Sealed(sealed)) = &back[0].password else {
        panic!()
    };
    assert_eq!(sealed.open(&key).unwrap().expose_secret(), "Hunter2Hunter2");
    assert!(back[1].password.is_none());
}

#[test]
fn too_many_bad_rows_are_counted_beyond_those_reported() {
    let text = "not a url\n".repeat(datasets::MAX_REPORTED + 5);
    match import(DatasetKind::Targets, ImportFormat::Txt, &text) {
        Err(ImportError::Rows { errors, total }) => {
            assert_eq!(
                (errors.len(), total),
                (datasets::MAX_REPORTED, datasets::MAX_REPORTED + 5)
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn rows_written_as_json_in_their_canonical_shape_import_back() {
    let csv_of = |kind, text: &str| import(kind, ImportFormat::Csv, text).unwrap();
    let all = [
        csv_of(
            DatasetKind::Targets,
            "url,traffic_type,source,keyword,flow_target,click_target\n\
             https://example.com/,referral,https://news.example.org/,,3,1\n",
        ),
        csv_of(
            DatasetKind::Proxies,
            "scheme,host,port,username,region\nsocks5,::1,1080,u,EU\n",
        ),
        csv_of(
            DatasetKind::SettingsProfiles,
            "name,session_duration,pages,delay_min,delay_max,scrolling,clicks,external_share,\
             click_delay_ms,instances,proxy_switching,dns_hosts,marker\n\
             All,30..60,3,5,9,yes,yes,0.2,100..200,4,on_failure,example.com=192.0.2.7,no\n",
        ),
    ];
    for rows in all {
        let json = match &rows {
            Rows::Targets(r) => serde_json::to_string(r),
            Rows::Proxies(r) => serde_json::to_string(r),
            Rows::DeviceProfiles(r) => serde_json::to_string(r),
            Rows::SettingsProfiles(r) => serde_json::to_string(r),
        }
        .unwrap();
        assert_eq!(
            import(rows.kind(), ImportFormat::Json, &json),
            Ok(rows),
            "{json}"
        );
    }
}
