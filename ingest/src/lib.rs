//! MQTT source of ccstream: subscribes to shadow updates and life cycle events and turns them
//! into observations for the rule engine and the object sinks.
//!
//! Not built yet: the rule engine issue brings the rumqttc source, topic parsing, manual acks
//! and the optional embedded broker here. This crate must not evaluate rules or write objects.
