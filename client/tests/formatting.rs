//! Output formatting without a daemon: Go templates, docker's tables, row
//! contexts for `ps` and `images`, sizes, durations and `.dockerignore`.

use serde_json::json;
use vessel_cli::commands::container::{display_ports, ps_row, stats_row};
use vessel_cli::commands::image::image_rows;
use vessel_cli::commands::system::{df_rows, event_line};
use vessel_cli::format::{indent_json, render_rows, tabwrite};
use vessel_cli::ignore::Matcher;
use vessel_cli::template::Template;
use vessel_cli::units;

fn render(t: &str, v: &serde_json::Value) -> String {
    Template::parse(t)
        .expect("template parses")
        .render(v)
        .expect("template renders")
}

#[test]
fn go_template_subset() {
    let v = json!({
        "Name": "/web",
        "Config": {"Env": ["A=1", "B=2"], "Labels": {"com.x": "y"}},
        "NetworkSettings": {"Networks": {"bridge": {"IPAddress": "172.17.0.2"}}},
        "Mounts": [],
        "Size": 4_264_000,
        "Ratio": 0.5,
    });
    assert_eq!(render("{{.Name}}", &v), "/web");
    assert_eq!(render("{{join .Config.Env \",\"}}", &v), "A=1,B=2");
    assert_eq!(
        render(
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &v
        ),
        "172.17.0.2"
    );
    assert_eq!(render("{{index .Config.Labels \"com.x\"}}", &v), "y");
    assert_eq!(render("{{json .Config.Labels}}", &v), r#"{"com.x":"y"}"#);
    assert_eq!(render("{{if .Mounts}}m{{else}}none{{end}}", &v), "none");
    assert_eq!(render("{{.Size}} {{.Ratio}}", &v), "4264000 0.5");
    assert_eq!(render("{{printf \"%5.1f%%\" .Ratio}}", &v), "  0.5%");
    assert_eq!(
        render("{{range $k, $v := .Config.Labels}}{{$k}}={{$v}}{{end}}", &v),
        "com.x=y"
    );
    assert_eq!(render("{{with .Nope}}x{{else}}absent{{end}}", &v), "absent");
    assert_eq!(render("{{.Nope}}", &v), "<no value>");
    assert_eq!(
        render("{{len .Config.Env | printf \"%d vars\"}}", &v),
        "2 vars"
    );
    assert_eq!(render("{{lower \"ABC\"}}{{upper \"d\"}}", &v), "abcD");
    assert!(Template::parse("{{.Name").is_err());
    assert!(Template::parse("{{range .X}}").is_err());
}

#[test]
fn tables_and_json_rows() {
    let header = json!({"A": "COLUMN A", "B": "B"});
    let rows = vec![
        json!({"A": "long value here", "B": "1"}),
        json!({"A": "x", "B": "2"}),
    ];
    let out = render_rows("", "table {{.A}}\t{{.B}}", &header, &rows).unwrap();
    assert_eq!(
        out,
        "COLUMN A          B\nlong value here   1\nx                 2\n"
    );
    assert_eq!(render_rows("{{.B}}", "", &header, &rows).unwrap(), "1\n2\n");
    assert_eq!(tabwrite("a\tb\tc"), "a         b         c");
    assert_eq!(indent_json(b"{\"a\":[]}", "  "), "{\n  \"a\": []\n}");
}

#[test]
fn ps_rows_like_docker() {
    let c = json!({
        "Id": "0a8a6763b5201a527ba8d0afc0ab9ca138842c3ca36b248bd4165d769eca62a3",
        "Names": ["/web", "/other/link"],
        "Image": "busybox",
        "Command": "sh -c 'i=0; while true; do sleep 1; done'",
        "Created": 0,
        "State": "running",
        "Status": "Up 2 minutes",
        "Ports": [{"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},
                  {"PrivatePort": 53, "Type": "udp"}],
        "Labels": {"b": "2", "a": "1"},
        "SizeRw": 12, "SizeRootFs": 4_264_000,
    });
    let r = ps_row(&c, true);
    assert_eq!(r["ID"], "0a8a6763b520");
    assert_eq!(r["Names"], "web", "links are hidden when truncating");
    assert_eq!(r["Command"], "\"sh -c 'i=0; while t…\"");
    assert!(r["RunningFor"].as_str().unwrap().ends_with(" years ago"));
    assert_eq!(r["Ports"], "53/udp, 0.0.0.0:8080->80/tcp");
    assert_eq!(r["Labels"], "a=1,b=2");
    assert_eq!(r["Size"], "12B (virtual 4.26MB)");
    assert_eq!(
        display_ports(Some(
            &json!([{"IP": "::", "PrivatePort": 80, "PublicPort": 80, "Type": "tcp"}])
        )),
        "[::]:80->80/tcp"
    );
    let full = ps_row(&c, false);
    assert_eq!(full["Names"], "web,other/link");
}

#[test]
fn image_rows_like_docker() {
    let img = json!({"Id": "sha256:259be1fda728ebd3127a9f7c02daf97e18f77c164fee11d1522966fcfe17b869",
                     "RepoTags": ["busybox:latest", "localhost:5000/bb:1"], "Created": 0, "Size": 1_990_000});
    let rows = image_rows(&img, true);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1]["Repository"], "localhost:5000/bb");
    assert_eq!(rows[1]["Tag"], "1");
    assert_eq!(rows[0]["ID"], "259be1fda728");
    assert_eq!(rows[0]["Size"], "1.99MB");
    let dangling = image_rows(
        &json!({"Id": "sha256:ab", "RepoTags": [], "Created": 0, "Size": 0}),
        true,
    );
    assert_eq!(dangling[0]["Repository"], "<none>");
    assert_eq!(dangling[0]["Tag"], "<none>");
}

#[test]
fn stats_df_and_events() {
    let s = json!({
        "id": "0123456789abcdef", "name": "/web",
        "cpu_stats": {"cpu_usage": {"total_usage": 300}, "system_cpu_usage": 2000, "online_cpus": 2},
        "precpu_stats": {"cpu_usage": {"total_usage": 100}, "system_cpu_usage": 1000},
        "memory_stats": {"usage": 2_097_152, "limit": 8_388_608, "stats": {"total_inactive_file": 1_048_576}},
        "networks": {"eth0": {"rx_bytes": 1500, "tx_bytes": 0}},
        "blkio_stats": {"io_service_bytes_recursive": [{"op": "Read", "value": 4096}, {"op": "Write", "value": 0}]},
        "pids_stats": {"current": 3},
    });
    let r = stats_row(&s, "web", true);
    assert_eq!(r["CPUPerc"], "40.00%");
    assert_eq!(r["MemUsage"], "1MiB / 8MiB");
    assert_eq!(r["MemPerc"], "12.50%");
    assert_eq!(r["NetIO"], "1.5kB / 0B");
    assert_eq!(r["BlockIO"], "4.1kB / 0B");
    assert_eq!(r["PIDs"], "3");

    let df = df_rows(&json!({
        "LayersSize": 2_000_000,
        "Images": [{"Containers": 1, "Size": 2_000_000, "SharedSize": 0}, {"Containers": 0, "Size": 1000, "SharedSize": 0}],
        "Containers": [{"State": "running", "SizeRw": 10}, {"State": "exited", "SizeRw": 30}],
        "Volumes": [{"UsageData": {"Size": 100, "RefCount": 0}}],
        "BuildCache": [],
    }));
    assert_eq!(df[0]["Reclaimable"], "0B (0%)");
    assert_eq!(df[1]["Active"], "1");
    assert_eq!(df[1]["Reclaimable"], "30B (75%)");
    assert_eq!(df[2]["Reclaimable"], "100B (100%)");
    assert_eq!(df[3]["Size"], "0B");

    let e = json!({"Type": "container", "Action": "start", "Actor": {"ID": "abc", "Attributes": {"name": "web", "image": "busybox"}},
                   "time": 1, "timeNano": 1_000_000_123});
    assert_eq!(
        event_line(&e),
        "1970-01-01T00:00:01.000000123Z container start abc (image=busybox, name=web)"
    );
}

#[test]
fn sizes_and_durations() {
    assert_eq!(units::human_size_prec(4_264_000.0, 3), "4.26MB");
    assert_eq!(
        units::bytes_size(23.54 * 1024.0 * 1024.0 * 1024.0),
        "23.54GiB"
    );
    assert_eq!(units::ram_in_bytes("1.5g").unwrap(), 1_610_612_736);
    assert_eq!(
        units::human_duration(std::time::Duration::from_secs(2 * 60)),
        "2 minutes"
    );
    assert_eq!(
        units::human_duration(std::time::Duration::from_secs(59 * 60)),
        "59 minutes"
    );
    assert_eq!(
        units::human_duration(std::time::Duration::from_secs(47 * 3600)),
        "47 hours"
    );
    assert_eq!(
        units::parse_go_duration("1h2m3s").unwrap(),
        3_723_000_000_000
    );
}

#[test]
fn dockerignore_semantics() {
    let m = Matcher::parse(
        "# build outputs\ntarget\n**/*.tmp\n!important.tmp\n/docs/*.md\n!docs/README.md\n",
    )
    .unwrap();
    assert!(m.excluded("target"));
    assert!(m.excluded("target/debug/x"));
    assert!(m.excluded("a.tmp"));
    assert!(m.excluded("deep/dir/b.tmp"));
    assert!(!m.excluded("important.tmp"));
    assert!(m.excluded("docs/guide.md"));
    assert!(!m.excluded("docs/README.md"));
    assert!(!m.excluded("docs/sub/guide.md"), "* stops at /");
    assert!(!m.excluded("src/main.rs"));
    assert!(m.can_skip_dir("target"));
    assert!(!m.can_skip_dir("docs"));
}
