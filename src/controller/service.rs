//! The pass's Service: applied, reverted, recreated, re-adopted or deleted.

use super::*;

/// Applies, reverts, recreates or deletes the Service; returns what its status shows.
pub(super) async fn sync_service(
    crs: &CraneReplicaSet,
    ctx: &Context,
    ns: &str,
) -> Result<Option<ServiceStatus>, Error> {
    let api: Api<Decoded<Service>> = Api::namespaced(ctx.client.clone(), ns);
    let uid = crs.uid();
    let is_ours = |s: &Service| {
        s.owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
    };
    let wanted = crs.spec.service.enabled.then(|| service_name(crs));
    let owned: Vec<Arc<Service>> = ctx
        .services
        .state()
        .into_iter()
        .filter(|s| s.namespace().as_deref() == Some(ns) && is_ours(s))
        .collect();
    for stale in owned.iter().filter(|s| Some(s.name_any()) != wanted) {
        // Only the Service that was seen: not one made anew under its name meanwhile.
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: stale.uid(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&stale.name_any(), &params).await {
            Ok(_) => {
                let note = format!("Deleted service: {}", stale.name_any());
                let related = Some(stale.object_ref(&()));
                ctx.event(
                    crs,
                    EventType::Normal,
                    "SuccessfulDelete",
                    "Delete",
                    note,
                    related,
                );
            }
            Err(e) if matches!(api_status(&e), Some(404 | 409)) => {}
            Err(e) => {
                return Err(kube_err("delete", format!("service {}", stale.name_any()))(
                    e,
                ));
            }
        }
    }
    let Some(name) = wanted else { return Ok(None) };
    let desired = desired_service(crs).map_err(|e| Error::Service {
        object: key_of(crs),
        failure: Failure {
            reason: "InvalidServicePort",
            message: e.to_string(),
        },
    })?;
    let live = match ctx.services.get(&ObjectRef::new(&name).within(ns)) {
        Some(live) => Some(live),
        // Not in the cache (which holds only labelled Services): ask the API server, so a
        // Service that someone else made is never taken over.
        None => api
            .get_opt(&name)
            .await
            .map_err(kube_err("get", format!("service {name}")))?
            .and_then(Decoded::readable)
            .map(Arc::new),
    };
    let action = service_action(live.as_deref(), &desired);
    // An orphan is taken back only by the CraneReplicaSet it was made for, as read fresh.
    let orphan = live.as_deref().is_some_and(|l| controller_of(l).is_none());
    if orphan && !matches!(action, ServiceAction::Conflict | ServiceAction::InSync) {
        may_adopt(crs, ctx).await?;
    }
    match action {
        ServiceAction::Conflict => {
            return Err(Error::Service {
                object: key_of(crs),
                failure: Failure {
                    reason: "ServiceConflict",
                    message: format!(
                        "Service {name} exists and is not controlled by this CraneReplicaSet; delete it or set spec.service.name"
                    ),
                },
            });
        }
        ServiceAction::InSync => {
            return Ok(live.as_deref().map(service_status));
        }
        ServiceAction::RestorePortsThenApply => {
            // Someone edited the port: put the whole list back first (a JSON merge patch
            // replaces lists), then apply as usual.
            let ports = json!({"spec": {"ports": desired.spec.as_ref().map(|s| &s.ports)}});
            api.patch(
                &name,
                &PatchParams {
                    field_manager: Some(MANAGER.into()),
                    ..PatchParams::default()
                },
                &Patch::Merge(&ports),
            )
            .await
            .map_err(kube_err("restore the ports of", format!("service {name}")))?;
        }
        ServiceAction::Apply => {}
    }

    let applied = api
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&desired),
        )
        .await
        .map_err(|e| match api_status(&e) {
            // Refused for what the CraneReplicaSet asks (an invalid Service, or one its
            // quota or policy forbids): retrying alone will not help, so say so.
            Some(code @ (400 | 403 | 422)) => Error::Service {
                object: key_of(crs),
                failure: Failure {
                    reason: if code == 403 {
                        "ServiceForbidden"
                    } else {
                        "InvalidService"
                    },
                    message: format!("Service {name} was refused: {}", error_message(&e)),
                },
            },
            _ => kube_err("apply", format!("service {name}"))(e),
        })?;
    if orphan {
        info!(object = %key_of(crs), service = %name, "re-adopted the orphaned service");
    } else if live.is_none() {
        let note = format!("Created service: {name}");
        let related = Some(applied.object_ref(&()));
        ctx.event(
            crs,
            EventType::Normal,
            "SuccessfulCreate",
            "Create",
            note,
            related,
        );
    } else {
        info!(object = %key_of(crs), service = %name, "reverted changes to the service's owned fields");
    }
    // A Service whose answer cannot be decoded in full shows what can be.
    Ok(applied.readable().as_ref().map(service_status))
}
