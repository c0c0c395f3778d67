//! `loadgen setup`: registers the hotels and room types of the data set.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use hotel_common::pb::{self, command_service_client::CommandServiceClient};
use tonic::Code;
use uuid::Uuid;

use crate::{
    cli::{self, AuthArgs, Conn},
    hotels::{HotelArgs, Hotels},
};

#[derive(Debug, Clone, Args)]
pub struct SetupArgs {
    /// URL of the command server.
    #[arg(
        long,
        env = "LOADGEN_COMMAND_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub command_url: String,

    #[command(flatten)]
    pub auth: AuthArgs,

    #[command(flatten)]
    pub hotels: HotelArgs,

    /// Rooms of each room type.
    #[arg(long, default_value_t = 50)]
    pub inventory: i32,
}

pub async fn run(args: SetupArgs) -> anyhow::Result<()> {
    let created = setup(&args).await?;
    println!(
        "setup: {} hotels x {} room types ({} created, the rest already existed)",
        args.hotels.hotels, args.hotels.room_types, created
    );
    Ok(())
}

/// Registers every hotel and room type; returns how many were new.
pub async fn setup(args: &SetupArgs) -> anyhow::Result<usize> {
    let hotels = Hotels::new(&args.hotels);
    let channel = cli::connect(&args.command_url, 1, Duration::from_secs(30), &args.auth)
        .await?
        .remove(0);
    let mut client = CommandServiceClient::new(channel);
    let mut created = 0;
    for hotel in 0..hotels.hotels {
        let hotel_id = hotels.hotel_id(hotel);
        let request = pb::RegisterHotelRequest {
            command_id: Uuid::new_v4().to_string(),
            hotel_id: hotel_id.clone(),
            name: format!("Loadgen Hotel {hotel}"),
            city: hotels.city_of(hotel).to_owned(),
            correlation_id: String::new(),
        };
        created += new_or_existing(client.register_hotel(request).await)
            .with_context(|| format!("registering hotel {hotel_id}"))?;
        for room_type in 0..hotels.room_types {
            created += add_room_type(&mut client, &hotels, hotel, room_type, args.inventory)
                .await
                .with_context(|| format!("adding room type {room_type} to {hotel_id}"))?;
        }
    }
    Ok(created)
}

async fn add_room_type(
    client: &mut CommandServiceClient<Conn>,
    hotels: &Hotels,
    hotel: usize,
    room_type: usize,
    inventory: i32,
) -> anyhow::Result<usize> {
    let code = hotels.room_code(room_type);
    let request = pb::AddRoomTypeRequest {
        precondition: None,
        command_id: Uuid::new_v4().to_string(),
        hotel_id: hotels.hotel_id(hotel),
        code: code.clone(),
        name: format!("Room type {code}"),
        max_guests: 2,
        inventory,
        nightly_rate: Some(pb::Money {
            amount_minor: 8_000 + 4_000 * room_type as i64,
            currency: "EUR".to_owned(),
        }),
        correlation_id: String::new(),
    };
    new_or_existing(client.add_room_type(request).await)
}

/// 1 for a created entity, 0 for one that already existed.
fn new_or_existing<T>(reply: Result<tonic::Response<T>, tonic::Status>) -> anyhow::Result<usize> {
    match reply {
        Ok(_) => Ok(1),
        Err(status) if status.code() == Code::AlreadyExists => Ok(0),
        Err(status) => Err(anyhow::anyhow!("{:?}: {}", status.code(), status.message())),
    }
}
