namespace flowplane.test;

// Sales order lines as S/4HANA's API_SALES_ORDER_SRV serves them (flat: the sold-to party and
// order date of the header are copied onto the line). LastChangeDateTime is the change
// timestamp incremental passes filter on; the seed gives many lines the same one.
entity SalesOrderItems {
  key SalesOrder             : String(10);
  key SalesOrderItem         : String(6);
      Material               : String(40);
      Plant                  : String(4);
      RequestedQuantity      : Integer;
      RequestedQuantityUnit  : String(3);
      NetAmount              : Decimal(15, 2);
      TransactionCurrency    : String(5);
      SalesOrderItemCategory : String(4);
      SoldToParty            : String(10);
      CreationDate           : Date;
      LastChangeDateTime     : Timestamp;
}

// The sales history a flow writes: the fields of the sales-order-lines contract. `etag` is
// the entity's concurrency token (a new UUID on every write, see @odata.etag in the service):
// with it, CAP refuses writes without If-Match (428) and writes with a stale one (412).
entity SalesHistory {
  key salesOrder     : String(10);
  key salesOrderItem : String(6);
      sku            : String(40);
      location       : String(20);
      orderedQuantity: Integer;
      unit           : String(3);
      netAmount      : Decimal(15, 2);
      currency       : String(3);
      itemCategory   : String(20);
      customer       : String(10);
      orderDate      : Date;
      changedAt      : Timestamp;
      source         : String(10);
      etag           : UUID;
}
