//! A read model never steps past an event it cannot apply (guarantee 10):
//! an event of a kind this binary does not know, or one the read model
//! refuses, stops it right before that event, visibly (state, status with
//! position and reason, health), until it is upgraded or resumed.

mod support;

use std::time::Duration;

use hotel_common::pb;
use support::{App, Events, ScriptedStream, Stay, TempDir, eventually};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// A hotel with one room type and three bookings: positions 1 to 5.
fn start(events: &mut Events) -> Vec<pb::EventEnvelope> {
    let mut log = vec![
        events.hotel("h1", "Hotel One", "Lisboa"),
        events.room_type("h1", "DBL", 2, 1_000_000, 10_000),
    ];
    for i in 0..3 {
        let stay = Stay::new("h1", "DBL", &format!("g{i}"), "2030-03-01", "2030-03-02");
        log.push(events.confirmed(&stay));
    }
    log
}

async fn health(app: &App) -> ServingStatus {
    HealthClient::new(app.channel().await)
        .check(HealthCheckRequest {
            service: "hotel.v1.QueryService".to_owned(),
        })
        .await
        .expect("health")
        .into_inner()
        .status()
}

async fn wait_until_stopped(app: &App) -> pb::ProjectionStop {
    let stopped = eventually(Duration::from_secs(10), || {
        app.projection.state() == pb::ProjectionState::Stopped
    })
    .await;
    assert!(
        stopped,
        "the projection never stopped: {:?}",
        app.projection.report()
    );
    app.projection
        .report()
        .stopped
        .expect("a stopped projection says why")
}

#[tokio::test]
async fn an_unknown_event_kind_stops_it_before_that_event_until_upgraded() {
    let dir = TempDir::new();
    let mut events = Events::new();
    let stream = ScriptedStream::new();
    let mut log = start(&mut events);
    // Position 6: a kind this binary does not know (a newer server's).
    let mut unknown = events.hotel("h2", "Hotel Two", "Porto");
    let known = unknown.clone();
    unknown.event = Some(pb::Event { kind: None });
    unknown.event_type = "HotelRenamed".to_owned();
    log.push(unknown.clone());
    log.push(events.confirmed(&Stay::new("h1", "DBL", "late", "2030-03-01", "2030-03-02")));
    stream.append(log);
    let app = App::spawn(&dir, stream.clone()).await;

    let stop = wait_until_stopped(&app).await;
    assert_eq!(stop.position, 6);
    assert_eq!(stop.event_id, unknown.event_id);
    assert_eq!(stop.reason, "UNKNOWN_EVENT_KIND");
    assert!(stop.message.contains("newer binary"), "{}", stop.message);
    // Everything before it was applied, nothing after it.
    assert_eq!(app.projection.checkpoint(), 5);
    assert_eq!(health(&app).await, ServingStatus::NotServing);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        app.projection.checkpoint(),
        5,
        "never past the unknown event"
    );
    // Queries still answer, as of the checkpoint.
    let status = app
        .client()
        .await
        .get_projection_status(pb::GetProjectionStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.state, pb::ProjectionState::Stopped as i32);
    assert_eq!(status.checkpoint, 5);
    assert_eq!(status.stopped.expect("the stop").position, 6);
    app.stop().await;

    // A binary that knows the kind (here: the log as it would decode)
    // continues from the same file, without a rebuild.
    stream.replace(known);
    let app = App::spawn(&dir, stream.clone()).await;
    app.wait_for(7).await;
    assert_eq!(health(&app).await, ServingStatus::Serving);
    assert!(app.projection.report().stopped.is_none());
    app.stop().await;
}

#[tokio::test]
async fn a_refused_event_stops_it_after_retries_and_an_operator_resumes_it() {
    let dir = TempDir::new();
    let mut events = Events::new();
    let stream = ScriptedStream::new();
    let mut log = start(&mut events);
    // Position 6: a check-in of a reservation the read model never saw.
    let ghost = Stay::new("h1", "DBL", "ghost", "2030-03-01", "2030-03-02");
    let refused = events.checked_in(&ghost);
    log.push(refused.clone());
    log.push(events.confirmed(&Stay::new("h1", "DBL", "late", "2030-03-01", "2030-03-02")));
    stream.append(log);
    let app = App::spawn(&dir, stream.clone()).await;
    app.wait_for(5).await;

    let stop = wait_until_stopped(&app).await;
    assert_eq!((stop.position, stop.reason.as_str()), (6, "EVENT_REFUSED"));
    assert_eq!(stop.event_id, refused.event_id);
    assert!(stop.message.contains("unknown"), "{}", stop.message);
    assert_eq!(app.projection.checkpoint(), 5);
    assert_eq!(health(&app).await, ServingStatus::NotServing);
    let tries = stream
        .subscriptions()
        .iter()
        .filter(|from| **from == 6)
        .count();
    assert!(
        (1..=3).contains(&tries),
        "bounded retries: {tries} subscriptions from 6"
    );

    // The cause removed (the log fixed), an operator resumes it.
    let mut fixed = refused.clone();
    fixed.event = events.hotel("h3", "Hotel Three", "Faro").event;
    fixed.event_type = "HotelRegistered".to_owned();
    stream.replace(fixed);
    let mut admin =
        pb::query_admin_service_client::QueryAdminServiceClient::new(app.channel().await);
    let resumed = admin
        .resume_projection(pb::ResumeProjectionRequest {})
        .await
        .expect("resume")
        .into_inner();
    assert!(resumed.was_stopped);
    assert_eq!(resumed.checkpoint, 5);
    app.wait_for(7).await;
    let live = eventually(Duration::from_secs(5), || {
        app.projection.state() == pb::ProjectionState::Live
    })
    .await;
    assert!(live);
    assert_eq!(health(&app).await, ServingStatus::Serving);
    // Resuming a projection that follows changes nothing.
    let again = admin
        .resume_projection(pb::ResumeProjectionRequest {})
        .await
        .expect("resume")
        .into_inner();
    assert!(!again.was_stopped);
    app.stop().await;
}
