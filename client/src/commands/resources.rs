//! Volume and network verbs.

use http::HeaderMap;
use serde_json::{Map, Value, json};

use super::{Ctx, Result, filters_json, finish, msg, out, report};
use crate::api::enc;
use crate::format::{labels_string, render_rows, short_id};
use crate::opts;

/// `volume` subcommands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum VolumeCmd {
    /// Create a volume
    Create {
        /// Specify volume driver name
        #[arg(short = 'd', long, default_value = "local")]
        driver: String,
        /// Set metadata for a volume
        #[arg(long)]
        label: Vec<String>,
        /// Set driver specific options
        #[arg(short = 'o', long = "opt")]
        opt: Vec<String>,
        name: Option<String>,
    },
    /// List volumes
    #[command(alias = "list")]
    Ls {
        /// Provide filter values (e.g. "dangling=true")
        #[arg(short = 'f', long = "filter")]
        filter: Vec<String>,
        /// Format output using a custom template
        #[arg(long)]
        format: Option<String>,
        /// Only display volume names
        #[arg(short = 'q', long)]
        quiet: bool,
    },
    /// Display detailed information on one or more volumes
    Inspect {
        /// Format output using a custom template
        #[arg(short = 'f', long)]
        format: Option<String>,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove one or more volumes
    #[command(alias = "remove")]
    Rm {
        /// Force the removal of one or more volumes
        #[arg(short = 'f', long)]
        force: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove unused local volumes
    Prune {
        /// Remove all unused volumes, not just anonymous ones
        #[arg(short = 'a', long)]
        all: bool,
        /// Provide filter values (e.g. "label=<label>")
        #[arg(long = "filter")]
        filter: Vec<String>,
        /// Do not prompt for confirmation
        #[arg(short = 'f', long)]
        force: bool,
    },
}

async fn inspect_kind(
    ctx: &Ctx,
    kind: &str,
    names: &[String],
    format: Option<&str>,
) -> Result<i32> {
    let a = super::container::InspectArgs {
        format: format.map(str::to_string),
        size: false,
        kind: None,
        names: names.to_vec(),
    };
    super::container::inspect(ctx, &a, Some(kind)).await
}

/// `volume ...`.
pub async fn volume(ctx: &Ctx, c: &VolumeCmd) -> Result<i32> {
    match c {
        VolumeCmd::Create {
            driver,
            label,
            opt,
            name,
        } => {
            let body = json!({
                "Name": name.clone().unwrap_or_default(),
                "Driver": driver,
                "DriverOpts": opts::kv_map("opt", opt)?,
                "Labels": opts::parse_labels(&[], label)?,
            });
            let resp = ctx
                .client
                .post_json("/volumes/create", &body, HeaderMap::new())
                .await?;
            let v: Value = ctx.client.json_of("volume create", resp).await?;
            println!("{}", v["Name"].as_str().unwrap_or(""));
            Ok(0)
        }
        VolumeCmd::Ls {
            filter,
            format,
            quiet,
        } => {
            let q = filters_json(filter)?
                .map(|f| format!("?filters={}", enc(&f)))
                .unwrap_or_default();
            let v: Value = ctx.client.get_json(&format!("/volumes{q}")).await?;
            let mut vols: Vec<Value> = v["Volumes"].as_array().cloned().unwrap_or_default();
            vols.sort_by(|a, b| a["Name"].as_str().cmp(&b["Name"].as_str()));
            for w in v["Warnings"].as_array().into_iter().flatten() {
                eprintln!("{}", w.as_str().unwrap_or(""));
            }
            if *quiet && format.is_none() {
                for x in &vols {
                    println!("{}", x["Name"].as_str().unwrap_or(""));
                }
                return Ok(0);
            }
            let rows: Vec<Value> = vols
                .iter()
                .map(|x| {
                    json!({"Name": x["Name"], "Driver": x["Driver"], "Scope": x["Scope"],
                           "Mountpoint": x["Mountpoint"], "Labels": labels_string(x.get("Labels")),
                           "Links": "N/A", "Size": "N/A", "Availability": "N/A", "Group": "N/A"})
                })
                .collect();
            let header = json!({"Name": "VOLUME NAME", "Driver": "DRIVER", "Scope": "SCOPE", "Mountpoint": "MOUNTPOINT",
                                "Labels": "LABELS", "Links": "LINKS", "Size": "SIZE"});
            let format = ctx.default_format("volumesFormat", format.as_ref());
            out(&render_rows(
                &format,
                "table {{.Driver}}\t{{.Name}}",
                &header,
                &rows,
            )?);
            Ok(0)
        }
        VolumeCmd::Inspect { format, names } => {
            inspect_kind(ctx, "volume", names, format.as_deref()).await
        }
        VolumeCmd::Rm { force, names } => {
            let mut failed = false;
            for n in names {
                let q = if *force { "?force=1" } else { "" };
                match ctx.client.delete(&format!("/volumes/{}{q}", enc(n))).await {
                    Ok(_) => println!("{n}"),
                    Err(e) => report(&mut failed, &e.into()),
                }
            }
            finish(failed)
        }
        VolumeCmd::Prune { all, filter, force } => {
            let w = if *all {
                "WARNING! This will remove all local volumes not used by at least one container."
            } else {
                "WARNING! This will remove anonymous local volumes not used by at least one container."
            };
            if !force && !super::confirm(&format!("{w}\nAre you sure you want to continue?")) {
                return Ok(0);
            }
            let mut f = filter.clone();
            if *all && ctx.client.version().await.as_str() >= "1.42" {
                f.push("all=true".to_string());
            }
            let q = filters_json(&f)?
                .map(|f| format!("?filters={}", enc(&f)))
                .unwrap_or_default();
            let resp = ctx
                .client
                .post_json(
                    &format!("/volumes/prune{q}"),
                    &json!(null),
                    HeaderMap::new(),
                )
                .await?;
            let v: Value = ctx.client.json_of("prune", resp).await?;
            let mut s = String::new();
            let list: Vec<&str> = v["VolumesDeleted"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if !list.is_empty() {
                s.push_str("Deleted Volumes:\n");
                for x in list {
                    s.push_str(&format!("{x}\n"));
                }
                s.push('\n');
            }
            s.push_str(&format!(
                "Total reclaimed space: {}\n",
                super::reclaimed(&v["SpaceReclaimed"])
            ));
            out(&s);
            Ok(0)
        }
    }
}

/// `network` subcommands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum NetworkCmd {
    /// Create a network
    Create {
        /// Enable manual container attachment
        #[arg(long)]
        attachable: bool,
        /// Driver to manage the Network
        #[arg(short = 'd', long, default_value = "bridge")]
        driver: String,
        /// IPv4 or IPv6 Gateway for the master subnet
        #[arg(long)]
        gateway: Vec<String>,
        /// Restrict external access to the network
        #[arg(long)]
        internal: bool,
        /// Allocate container ip from a sub-range
        #[arg(long = "ip-range")]
        ip_range: Vec<String>,
        /// IP Address Management Driver
        #[arg(long = "ipam-driver", default_value = "default")]
        ipam_driver: String,
        /// Enable or disable IPv6 networking
        #[arg(long)]
        ipv6: bool,
        /// Set metadata on a network
        #[arg(long)]
        label: Vec<String>,
        /// Set driver specific options
        #[arg(short = 'o', long = "opt")]
        opt: Vec<String>,
        /// Subnet in CIDR format that represents a network segment
        #[arg(long)]
        subnet: Vec<String>,
        name: String,
    },
    /// List networks
    #[command(alias = "list")]
    Ls {
        /// Provide filter values (e.g. "driver=bridge")
        #[arg(short = 'f', long = "filter")]
        filter: Vec<String>,
        /// Format output using a custom template
        #[arg(long)]
        format: Option<String>,
        /// Do not truncate the output
        #[arg(long = "no-trunc")]
        no_trunc: bool,
        /// Only display network IDs
        #[arg(short = 'q', long)]
        quiet: bool,
    },
    /// Display detailed information on one or more networks
    Inspect {
        /// Format output using a custom template
        #[arg(short = 'f', long)]
        format: Option<String>,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove one or more networks
    #[command(alias = "remove")]
    Rm {
        /// Do not error if the network does not exist
        #[arg(short = 'f', long)]
        force: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Connect a container to a network
    Connect {
        /// Add network-scoped alias for the container
        #[arg(long)]
        alias: Vec<String>,
        /// IPv4 address
        #[arg(long)]
        ip: Option<String>,
        /// IPv6 address
        #[arg(long)]
        ip6: Option<String>,
        network: String,
        container: String,
    },
    /// Disconnect a container from a network
    Disconnect {
        /// Force the container to disconnect from a network
        #[arg(short = 'f', long)]
        force: bool,
        network: String,
        container: String,
    },
    /// Remove all unused networks
    Prune {
        /// Provide filter values (e.g. "until=<timestamp>")
        #[arg(long = "filter")]
        filter: Vec<String>,
        /// Do not prompt for confirmation
        #[arg(short = 'f', long)]
        force: bool,
    },
}

/// `network ...`.
pub async fn network(ctx: &Ctx, c: &NetworkCmd) -> Result<i32> {
    match c {
        NetworkCmd::Create {
            attachable,
            driver,
            gateway,
            internal,
            ip_range,
            ipam_driver,
            ipv6,
            label,
            opt,
            subnet,
            name,
        } => {
            if gateway.len() > subnet.len() || ip_range.len() > subnet.len() {
                return Err(msg("every gateway and ip-range needs a matching --subnet"));
            }
            let config: Vec<Value> = subnet
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let mut m = Map::new();
                    m.insert("Subnet".into(), json!(s));
                    if let Some(g) = gateway.get(i) {
                        m.insert("Gateway".into(), json!(g));
                    }
                    if let Some(r) = ip_range.get(i) {
                        m.insert("IPRange".into(), json!(r));
                    }
                    Value::Object(m)
                })
                .collect();
            let body = json!({
                "Name": name,
                "Driver": driver,
                "Internal": internal,
                "Attachable": attachable,
                "EnableIPv6": ipv6,
                "Options": opts::kv_map("opt", opt)?,
                "Labels": opts::parse_labels(&[], label)?,
                "IPAM": {"Driver": ipam_driver, "Config": config, "Options": {}},
                "CheckDuplicate": true,
            });
            let resp = ctx
                .client
                .post_json("/networks/create", &body, HeaderMap::new())
                .await?;
            let v: Value = ctx.client.json_of("network create", resp).await?;
            if let Some(w) = v["Warning"].as_str().filter(|w| !w.is_empty()) {
                eprintln!("WARNING: {w}");
            }
            println!("{}", v["Id"].as_str().unwrap_or(""));
            Ok(0)
        }
        NetworkCmd::Ls {
            filter,
            format,
            no_trunc,
            quiet,
        } => {
            let q = filters_json(filter)?
                .map(|f| format!("?filters={}", enc(&f)))
                .unwrap_or_default();
            let mut list: Vec<Value> = ctx.client.get_json(&format!("/networks{q}")).await?;
            list.sort_by(|a, b| a["Name"].as_str().cmp(&b["Name"].as_str()));
            let id = |n: &Value| {
                let id = n["Id"].as_str().unwrap_or("");
                if *no_trunc {
                    id.to_string()
                } else {
                    short_id(id)
                }
            };
            if *quiet && format.is_none() {
                for n in &list {
                    println!("{}", id(n));
                }
                return Ok(0);
            }
            let rows: Vec<Value> = list
                .iter()
                .map(|n| {
                    json!({"ID": id(n), "Name": n["Name"], "Driver": n["Driver"], "Scope": n["Scope"],
                           "IPv6": n["EnableIPv6"].as_bool().unwrap_or(false).to_string(),
                           "Internal": n["Internal"].as_bool().unwrap_or(false).to_string(),
                           "Labels": labels_string(n.get("Labels")), "CreatedAt": n["Created"]})
                })
                .collect();
            let header = json!({"ID": "NETWORK ID", "Name": "NAME", "Driver": "DRIVER", "Scope": "SCOPE",
                                "IPv6": "IPV6", "Internal": "INTERNAL", "Labels": "LABELS", "CreatedAt": "CREATED"});
            let format = ctx.default_format("networksFormat", format.as_ref());
            out(&render_rows(
                &format,
                "table {{.ID}}\t{{.Name}}\t{{.Driver}}\t{{.Scope}}",
                &header,
                &rows,
            )?);
            Ok(0)
        }
        NetworkCmd::Inspect { format, names } => {
            inspect_kind(ctx, "network", names, format.as_deref()).await
        }
        NetworkCmd::Rm { force, names } => {
            let mut failed = false;
            for n in names {
                match ctx.client.delete(&format!("/networks/{}", enc(n))).await {
                    Ok(_) => println!("{n}"),
                    Err(e) if *force && e.is_not_found() => {}
                    Err(e) => report(&mut failed, &e.into()),
                }
            }
            finish(failed)
        }
        NetworkCmd::Connect {
            alias,
            ip,
            ip6,
            network,
            container,
        } => {
            let mut ipam = Map::new();
            if let Some(i) = ip {
                ipam.insert("IPv4Address".into(), json!(i));
            }
            if let Some(i) = ip6 {
                ipam.insert("IPv6Address".into(), json!(i));
            }
            let body = json!({"Container": container, "EndpointConfig": {"Aliases": alias, "IPAMConfig": ipam}});
            ctx.client
                .post_json(
                    &format!("/networks/{}/connect", enc(network)),
                    &body,
                    HeaderMap::new(),
                )
                .await?;
            Ok(0)
        }
        NetworkCmd::Disconnect {
            force,
            network,
            container,
        } => {
            let body = json!({"Container": container, "Force": force});
            ctx.client
                .post_json(
                    &format!("/networks/{}/disconnect", enc(network)),
                    &body,
                    HeaderMap::new(),
                )
                .await?;
            Ok(0)
        }
        NetworkCmd::Prune { filter, force } => {
            if !force
                && !super::confirm(
                    "WARNING! This will remove all custom networks not used by at least one container.\nAre you sure you want to continue?",
                )
            {
                return Ok(0);
            }
            let q = filters_json(filter)?
                .map(|f| format!("?filters={}", enc(&f)))
                .unwrap_or_default();
            let resp = ctx
                .client
                .post_json(
                    &format!("/networks/prune{q}"),
                    &json!(null),
                    HeaderMap::new(),
                )
                .await?;
            let v: Value = ctx.client.json_of("prune", resp).await?;
            let list: Vec<&str> = v["NetworksDeleted"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if !list.is_empty() {
                let mut s = String::from("Deleted Networks:\n");
                for x in list {
                    s.push_str(&format!("{x}\n"));
                }
                out(&s);
            }
            Ok(0)
        }
    }
}
