//! Delivery bookkeeping of the outbox over one MQTT connection, as a pure
//! state machine (after rumqttc's `MqttState`): its methods change state and
//! never touch the network or the disk. The publisher asks it what to send
//! next, tells it what the client and the broker did, and removes an entry
//! from the outbox when it says the entry is delivered.
//!
//! rumqttc reports each publish as `Outgoing::Publish(pkid)` in the order the
//! publishes were requested; [`Delivery`] pairs those packet ids with the
//! entries they carry, so a `PubAck` maps back to an entry. An entry is
//! delivered when every part (the result, and its heatmap if any) is
//! acknowledged. After a reconnect everything still pending is sent again
//! from the start.

use std::collections::{BTreeMap, HashMap, VecDeque};

/// What a publish carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// A part of outbox entry `seq`.
    Entry(u64),
    /// Anything else (status, stats).
    Other,
}

/// Per-connection delivery state.
#[derive(Debug, Clone)]
pub struct Delivery {
    window: usize,
    /// Highest seq handed to the client on this connection (0: none yet).
    sent_up_to: u64,
    /// Entries handed to the client → parts not yet acknowledged.
    in_flight: BTreeMap<u64, usize>,
    /// Tags of publishes requested and not yet given a packet id, in order.
    requested: VecDeque<Tag>,
    /// Packet id → what it carries, until acknowledged.
    pkids: HashMap<u16, Tag>,
}

impl Delivery {
    /// Nothing sent yet; at most `window` entries in flight at a time.
    pub fn new(window: usize) -> Self {
        Self {
            window: window.max(1),
            sent_up_to: 0,
            in_flight: BTreeMap::new(),
            requested: VecDeque::new(),
            pkids: HashMap::new(),
        }
    }

    /// A new connection: nothing is in flight any more, and every pending
    /// entry is sent again from the start (the session is clean).
    pub fn reset(&mut self) {
        *self = Self::new(self.window);
    }

    /// Whether another entry may be sent now.
    pub fn has_room(&self) -> bool {
        self.in_flight.len() < self.window
    }

    /// Pending entries after this seq have not been sent on this connection.
    pub fn sent_up_to(&self) -> u64 {
        self.sent_up_to
    }

    /// Entry `seq` is being published as `parts` messages, in this order
    /// with any other publish.
    pub fn send(&mut self, seq: u64, parts: usize) {
        self.sent_up_to = self.sent_up_to.max(seq);
        self.in_flight.insert(seq, parts.max(1));
        for _ in 0..parts.max(1) {
            self.requested.push_back(Tag::Entry(seq));
        }
    }

    /// Something that is no outbox entry is being published.
    pub fn send_other(&mut self) {
        self.requested.push_back(Tag::Other);
    }

    /// Entry `seq` cannot be sent (unreadable): go on after it.
    pub fn skip(&mut self, seq: u64) {
        self.sent_up_to = self.sent_up_to.max(seq);
    }

    /// The client wrote the next requested publish with packet id `pkid`
    /// (0 for QoS 0, which is never acknowledged).
    pub fn on_outgoing(&mut self, pkid: u16) {
        if let Some(tag) = self.requested.pop_front() {
            if pkid != 0 {
                self.pkids.insert(pkid, tag);
            }
        }
    }

    /// The broker acknowledged `pkid`. Returns the entry that is now
    /// delivered in full, if this was its last part.
    pub fn on_ack(&mut self, pkid: u16) -> Option<u64> {
        let Some(Tag::Entry(seq)) = self.pkids.remove(&pkid) else {
            return None;
        };
        let left = self.in_flight.get_mut(&seq)?;
        *left = left.saturating_sub(1);
        if *left == 0 {
            self.in_flight.remove(&seq);
            Some(seq)
        } else {
            None
        }
    }

    /// Nothing is waiting for an acknowledgement.
    pub fn idle(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Entries in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Send `entries` (seq, parts) and let the client number the publishes from `first_pkid`.
    fn sent(d: &mut Delivery, entries: &[(u64, usize)], first_pkid: u16) -> u16 {
        let mut pkid = first_pkid;
        for &(seq, parts) in entries {
            d.send(seq, parts);
            for _ in 0..parts {
                d.on_outgoing(pkid);
                pkid += 1;
            }
        }
        pkid
    }

    #[test]
    fn an_entry_is_delivered_when_all_its_parts_are_acknowledged_in_any_order() {
        let mut d = Delivery::new(8);
        // #1: result + heatmap (pkids 1, 2); #2: result only (pkid 3).
        sent(&mut d, &[(1, 2), (2, 1)], 1);
        assert_eq!(d.sent_up_to(), 2);
        assert_eq!(d.on_ack(3), Some(2), "a later entry may finish first");
        assert_eq!(d.on_ack(2), None, "#1 still waits for its result");
        assert_eq!(d.on_ack(1), Some(1));
        assert!(d.idle());
        assert_eq!(d.on_ack(1), None, "a repeated ack changes nothing");
    }

    #[test]
    fn status_and_stats_publishes_keep_the_packet_ids_in_step() {
        let mut d = Delivery::new(8);
        d.send_other(); // status, QoS 1: pkid 1
        d.on_outgoing(1);
        d.send(5, 1);
        d.send_other(); // stats, QoS 0: no pkid
        d.on_outgoing(2);
        d.on_outgoing(0);
        assert_eq!(d.on_ack(1), None, "the status ack is no entry");
        assert_eq!(d.on_ack(2), Some(5));
    }

    #[test]
    fn after_a_reconnect_everything_in_flight_is_sent_again() {
        let mut d = Delivery::new(8);
        sent(&mut d, &[(1, 1), (2, 2)], 1);
        assert_eq!(d.in_flight(), 2);
        d.reset();
        assert_eq!(d.sent_up_to(), 0, "pending entries are sent again from the start");
        assert!(d.idle());
        // An ack that belonged to the old connection means nothing now.
        assert_eq!(d.on_ack(1), None);
        sent(&mut d, &[(1, 1)], 1);
        assert_eq!(d.on_ack(1), Some(1));
    }

    #[test]
    fn an_unreadable_entry_is_skipped_once_even_after_a_gap() {
        let mut d = Delivery::new(8);
        sent(&mut d, &[(2, 1)], 1);
        // Pending next: #7 (unreadable), then #9. Going on "after 3" would
        // read #7 again and again.
        d.skip(7);
        assert_eq!(d.sent_up_to(), 7);
        sent(&mut d, &[(9, 1)], 2);
        assert_eq!(d.sent_up_to(), 9);
        assert_eq!(d.on_ack(1), Some(2));
        assert_eq!(d.on_ack(2), Some(9));
        // Skipping never goes back.
        d.skip(3);
        assert_eq!(d.sent_up_to(), 9);
    }

    #[test]
    fn the_window_bounds_entries_in_flight_even_when_the_outbox_drops_one() {
        let mut d = Delivery::new(2);
        sent(&mut d, &[(1, 2), (2, 1)], 1);
        assert!(!d.has_room());
        // #1 was evicted from the outbox to stay within its bounds while in
        // flight: its acks still arrive, and free the window as usual.
        assert_eq!(d.on_ack(1), None);
        assert!(!d.has_room());
        assert_eq!(
            d.on_ack(2),
            Some(1),
            "the publisher removes #1 (already gone: no-op)"
        );
        assert!(d.has_room());
        sent(&mut d, &[(3, 1)], 4);
        assert!(!d.has_room());
        assert_eq!(d.on_ack(3), Some(2));
        assert_eq!(d.on_ack(4), Some(3));
        assert!(d.idle());
    }
}
