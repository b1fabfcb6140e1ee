// An independent EWS client against Exchange (or its emulator): ews-javascript-api, the JavaScript port of
// Microsoft's EWS Managed API, logged in with a mailbox's own account over NTLM, as Outlook-like clients do.
// Usage: node calendar.js <ews-url> <username> <password> <command> [json-args]
// Commands (each prints one JSON line):
//   list {"start", "end"}                          the calendar view: [{id, subject, start, end, recurring}]
//   create {"subject", "start", "end", "attendees", "location"}        -> {id, changeKey}
//   create-weekly {"subject", "start", "end", "attendees", "occurrences"} -> {id}
//   move-occurrence {"id", "index", "start", "end"}  one occurrence of a series moved: an exception -> {id}
//   update {"id", "subject"?, "start"?, "end"?}      -> {id}
//   cancel {"id", "text"?}                           the organizer cancels the meeting -> {id}
//   delete {"id"}                                    -> {id}
"use strict";

const ews = require("ews-javascript-api");
const { XhrApi } = require("@ewsjs/xhr");

const [url, username, password, command, rawArgs] = process.argv.slice(2);
const args = rawArgs ? JSON.parse(rawArgs) : {};

const service = new ews.ExchangeService(ews.ExchangeVersion.Exchange2016);
service.Url = new ews.Uri(url);
service.Credentials = new ews.WebCredentials(username, password);
ews.ConfigurationApi.ConfigureXHR(new XhrApi({ rejectUnauthorized: false }).useNtlmAuthentication(username, password));

const SEND = ews.SendInvitationsMode.SendToAllAndSaveCopy;
const SEND_UPDATE = ews.SendInvitationsOrCancellationsMode.SendToAllAndSaveCopy;
const at = (text) => new ews.DateTime(new Date(text).getTime());
const iso = (value) => new Date(value.TotalMilliSeconds).toISOString();

async function bind(id) {
  return ews.Appointment.Bind(service, new ews.ItemId(id));
}

async function run() {
  switch (command) {
    case "list": {
      const view = new ews.CalendarView(at(args.start), at(args.end));
      const found = await service.FindAppointments(ews.WellKnownFolderName.Calendar, view);
      return found.Items.map((item) => ({
        id: item.Id.UniqueId,
        subject: item.Subject,
        start: iso(item.Start),
        end: iso(item.End),
        recurring: item.IsRecurring,
      }));
    }
    case "create":
    case "create-weekly": {
      const appointment = new ews.Appointment(service);
      appointment.Subject = args.subject;
      appointment.Start = at(args.start);
      appointment.End = at(args.end);
      appointment.StartTimeZone = ews.TimeZoneInfo.Utc;
      appointment.EndTimeZone = ews.TimeZoneInfo.Utc;
      if (args.location) appointment.Location = args.location;
      appointment.Body = new ews.MessageBody(ews.BodyType.Text, args.body || "Made by ews-javascript-api");
      for (const address of args.attendees || []) appointment.RequiredAttendees.Add(address);
      if (command === "create-weekly") {
        const start = new Date(args.start);
        const day = [
          ews.DayOfTheWeek.Sunday, ews.DayOfTheWeek.Monday, ews.DayOfTheWeek.Tuesday, ews.DayOfTheWeek.Wednesday,
          ews.DayOfTheWeek.Thursday, ews.DayOfTheWeek.Friday, ews.DayOfTheWeek.Saturday,
        ][start.getUTCDay()];
        const pattern = new ews.Recurrence.WeeklyPattern(at(args.start), 1, [day]);
        pattern.NumberOfOccurrences = args.occurrences || 4;
        appointment.Recurrence = pattern;
      }
      await appointment.Save(ews.WellKnownFolderName.Calendar, SEND);
      return { id: appointment.Id.UniqueId };
    }
    case "move-occurrence": {
      const occurrence = await ews.Appointment.BindToOccurrence(service, new ews.ItemId(args.id), args.index);
      occurrence.Start = at(args.start);
      occurrence.End = at(args.end);
      await occurrence.Update(ews.ConflictResolutionMode.AlwaysOverwrite, SEND_UPDATE);
      return { id: occurrence.Id.UniqueId };
    }
    case "update": {
      const appointment = await bind(args.id);
      if (args.subject) appointment.Subject = args.subject;
      if (args.start) appointment.Start = at(args.start);
      if (args.end) appointment.End = at(args.end);
      await appointment.Update(ews.ConflictResolutionMode.AlwaysOverwrite, SEND_UPDATE);
      return { id: appointment.Id.UniqueId };
    }
    case "cancel": {
      const appointment = await bind(args.id);
      await appointment.CancelMeeting(args.text || "Cancelled");
      return { id: args.id };
    }
    case "delete": {
      const appointment = await bind(args.id);
      await appointment.Delete(ews.DeleteMode.MoveToDeletedItems, ews.SendCancellationsMode.SendToAllAndSaveCopy);
      return { id: args.id };
    }
    default:
      throw new Error(`unknown command ${JSON.stringify(command)}`);
  }
}

run().then(
  (result) => {
    process.stdout.write(JSON.stringify(result) + "\n");
  },
  (error) => {
    const detail = error && (error.message || error.Message || error.toString());
    process.stderr.write(`ews-javascript-api ${command} failed: ${detail}\n${error && error.stack ? error.stack : ""}\n`);
    process.exit(1);
  },
);
